"""image_codec against hand-built messages: every encoding, padded rows, malformed input."""
import cv2
import numpy as np
import pytest
from sensor_msgs.msg import CompressedImage, Image

from image_bombs import jpeg_claiming, jpeg_scan_bomb, png_bomb
from saom_ros.image_codec import (ImageDecodeError, array_to_image, check_image,
                                  compressed_to_rgb, image_to_array, image_to_rgb)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, size=(5, 7, 3), dtype=np.uint8)
ALPHA = RNG.integers(0, 256, size=(5, 7, 1), dtype=np.uint8)


def hand_built(pixels: np.ndarray, encoding: str, pad: int = 0, bigendian: bool = False) -> Image:
    """An Image made byte by byte, with ``pad`` junk bytes after every row."""
    h, w = pixels.shape[:2]
    dtype = pixels.dtype.newbyteorder(">" if bigendian else "<")
    rows = pixels.astype(dtype).reshape(h, -1).view(np.uint8)
    junk = np.full((h, pad), 0xAB, dtype=np.uint8)
    data = np.concatenate([rows, junk], axis=1).tobytes()
    return Image(height=h, width=w, encoding=encoding, is_bigendian=bigendian,
                 step=rows.shape[1] + pad, data=data)


CASES = {
    "rgb8": (RGB, RGB),
    "bgr8": (RGB[..., ::-1], RGB),
    "rgba8": (np.concatenate([RGB, ALPHA], axis=2), RGB),
    "bgra8": (np.concatenate([RGB[..., ::-1], ALPHA], axis=2), RGB),
    "mono8": (RGB[..., 0], np.repeat(RGB[..., :1], 3, axis=2)),
}


@pytest.mark.parametrize("pad", [0, 3, 16])
@pytest.mark.parametrize("encoding", list(CASES))
def test_encodings_convert_to_rgb_like_cv_bridge(encoding, pad):
    stored, expected = CASES[encoding]
    rgb = image_to_rgb(hand_built(np.ascontiguousarray(stored), encoding, pad=pad))
    assert rgb.dtype == np.uint8 and rgb.shape == (5, 7, 3)
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize("bigendian", [False, True])
def test_mono16_passthrough_honours_byte_order_and_padding(bigendian):
    values = RNG.integers(0, 65536, size=(4, 6), dtype=np.uint16)
    out = image_to_array(hand_built(values, "mono16", pad=2, bigendian=bigendian))
    assert out.dtype == np.uint16 and out.dtype.isnative
    np.testing.assert_array_equal(out, values)


def test_trailing_bytes_beyond_step_times_height_are_ignored():
    msg = hand_built(RGB, "rgb8")
    msg.data = bytes(msg.data) + b"\x00" * 11
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


def test_result_does_not_alias_the_message():
    msg = hand_built(RGB, "rgb8")
    out = image_to_rgb(msg)
    out[:] = 0
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)


def _step_too_small():
    msg = hand_built(RGB, "rgb8")
    msg.step = 7 * 3 - 1
    return msg


def _truncated():
    msg = hand_built(RGB, "rgb8")
    msg.data = bytes(msg.data)[:-1]
    return msg


def _odd_step_16bit():
    msg = hand_built(np.zeros((2, 2), np.uint16), "mono16")
    msg.step, msg.data = 5, bytes(10)
    return msg


@pytest.mark.parametrize("make, words", [
    (_step_too_small, "step 20 is less than"),
    (_truncated, "data holds 104 bytes"),
    (lambda: Image(height=0, width=0, encoding="rgb8", step=0), "empty image (0x0)"),
    (lambda: Image(height=2, width=2, encoding="yuv422", step=4, data=bytes(8)),
     "unsupported encoding 'yuv422'"),
    (lambda: Image(height=2, width=2, encoding="", step=6, data=bytes(12)),
     "unsupported encoding ''"),
])
def test_malformed_images_raise_clear_errors(make, words):
    with pytest.raises(ImageDecodeError) as err:
        image_to_rgb(make())
    assert words in str(err.value)


@pytest.mark.parametrize("encoding", ["mono16", "16UC1", "8UC1", "8UC3", "yuv422"])
def test_refusal_lists_only_the_encodings_that_convert(encoding):
    msg = Image(height=2, width=2, encoding=encoding, step=12, data=bytes(24))
    with pytest.raises(ImageDecodeError) as err:
        image_to_rgb(msg)
    assert str(err.value) == (f"unsupported encoding {encoding!r}; supported: "
                              "rgb8, bgr8, rgba8, bgra8, mono8")


def test_non_colour_encoding_is_readable_as_array():
    assert image_to_array(hand_built(np.zeros((2, 3), np.uint16), "mono16")).shape == (2, 3)
    with pytest.raises(ImageDecodeError, match="step 5 is not a multiple"):
        image_to_array(_odd_step_16bit())


def test_raw_images_over_the_pixel_limit_are_refused_before_copying():
    msg = Image(height=20000, width=20000, encoding="rgb8", step=60000, data=bytes(12))
    with pytest.raises(ImageDecodeError, match=r"20000x20000 = 400000000 pixels exceeds the "
                                               r"limit max_image_pixels = 16777216"):
        image_to_rgb(msg)


def test_raw_images_with_absurd_row_padding_are_refused():
    msg = hand_built(RGB, "rgb8", pad=100_000)  # 5 rows of 7 pixels in 500 kB
    np.testing.assert_array_equal(image_to_rgb(msg), RGB)
    with pytest.raises(ImageDecodeError, match=r"step\*height = 100021\*5 bytes exceeds the "
                                               r"3000 bytes of max_image_pixels = 1000"):
        image_to_rgb(msg, max_pixels=1000)
    with pytest.raises(ImageDecodeError, match="max_image_pixels = 1000"):
        image_to_array(msg, max_pixels=1000)


def test_check_image_refuses_what_image_to_array_would_without_copying():
    good = hand_built(np.zeros((2, 3), np.uint16), "16UC1")
    check_image(good, encodings=("16UC1", "32FC1"))
    with pytest.raises(ImageDecodeError, match="unsupported encoding 'mono16'; supported: 16UC1"):
        check_image(hand_built(np.zeros((2, 3), np.uint16), "mono16"), encodings=("16UC1",))
    with pytest.raises(ImageDecodeError, match="max_image_pixels = 5"):
        check_image(good, max_pixels=5)
    with pytest.raises(ImageDecodeError, match="data holds 104 bytes"):
        check_image(_truncated())


def compressed(pixels_rgb: np.ndarray, ext: str, fmt: str) -> CompressedImage:
    ok, buf = cv2.imencode(ext, cv2.cvtColor(pixels_rgb, cv2.COLOR_RGB2BGR))
    assert ok
    return CompressedImage(format=fmt, data=buf.tobytes())


@pytest.mark.parametrize("fmt", ["png", "bgr8; png compressed bgr8", ""])
def test_png_decodes_exactly(fmt):
    np.testing.assert_array_equal(compressed_to_rgb(compressed(RGB, ".png", fmt)), RGB)


def test_jpeg_decodes_to_rgb_in_the_right_channel_order():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 200  # strongly red: a swapped decode would come out blue
    out = compressed_to_rgb(compressed(img, ".jpg", "rgb8; jpeg compressed bgr8"))
    assert out.shape == (32, 32, 3)
    assert out[..., 0].mean() > 180 and out[..., 2].mean() < 30


def test_grayscale_png_becomes_three_equal_channels():
    gray = RGB[..., 0]
    ok, buf = cv2.imencode(".png", gray)
    out = compressed_to_rgb(CompressedImage(format="png", data=buf.tobytes()))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize("msg, words", [
    (CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0garbage"), "could not decode"),
    (CompressedImage(format="jpeg", data=b""), "could not decode 0 bytes"),
    (CompressedImage(format="tiff", data=b"II*\x00"), "unsupported compressed format 'tiff'"),
    (CompressedImage(format="16UC1; compressedDepth png", data=b"\x89PNG"), "compressedDepth"),
])
def test_corrupt_or_unsupported_compressed_images_raise(msg, words):
    with pytest.raises(ImageDecodeError) as err:
        compressed_to_rgb(msg)
    assert words in str(err.value)


@pytest.mark.parametrize("data, dims", [
    (png_bomb(2000, 1500), "2000x1500"), (jpeg_claiming(30000, 30000), "30000x30000")])
def test_compressed_images_over_the_limit_are_refused(data, dims):
    with pytest.raises(ImageDecodeError, match=f"{dims} = .* exceeds the limit max_image_pixels"):
        compressed_to_rgb(CompressedImage(format="png", data=data), max_pixels=1_000_000)


def test_truncated_jpeg_is_an_error_not_a_crash():
    good = compressed(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), ".jpg", "jpeg")
    good.data = bytes(good.data)[:40]
    with pytest.raises(ImageDecodeError):
        compressed_to_rgb(good)


@pytest.mark.parametrize("pixels, encoding", [
    (RGB, "rgb8"),
    (RNG.integers(0, 65536, (3, 4), dtype=np.uint16), "mono16"),
])
def test_array_to_image_round_trips(pixels, encoding):
    msg = array_to_image(pixels, encoding)
    assert (msg.height, msg.width, msg.encoding) == (*pixels.shape[:2], encoding)
    assert msg.step == pixels.shape[1] * pixels[0, 0].nbytes
    np.testing.assert_array_equal(image_to_array(msg), pixels)


@pytest.mark.parametrize("pixels, encoding", [
    (np.zeros((3, 4), np.uint8), "mono16"),
    (np.zeros((3, 4, 4), np.uint8), "rgb8"),
    (np.zeros((3, 4), np.uint8), "yuv422"),
])
def test_array_to_image_rejects_mismatched_arrays(pixels, encoding):
    with pytest.raises(ValueError):
        array_to_image(pixels, encoding)



def test_cv_bridge_does_the_conversion_where_it_is_installed(monkeypatch):
    """cv_bridge cannot be installed here: a stand-in checks that it is used, after validation."""
    from saom_ros import image_codec

    calls = []

    class CvBridgeError(TypeError):
        pass

    class CvBridge:
        def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):
            calls.append((msg.encoding, desired_encoding))
            if msg.encoding == "bgra8":
                raise CvBridgeError("conversion failed in cv_bridge")
            return np.zeros((msg.height, msg.width, 3), np.uint8)

    monkeypatch.setattr(image_codec, "CvBridge", CvBridge)
    monkeypatch.setattr(image_codec, "CvBridgeError", CvBridgeError)
    assert image_codec.backend() == "cv_bridge"
    assert image_to_rgb(hand_built(RGB, "bgr8")).shape == (5, 7, 3)
    assert calls == [("bgr8", "rgb8")]
    with pytest.raises(ImageDecodeError, match="conversion failed in cv_bridge"):
        image_to_rgb(hand_built(CASES["bgra8"][0], "bgra8"))
    with pytest.raises(ImageDecodeError, match="data holds"):  # validated before cv_bridge
        image_to_rgb(_truncated())
    assert len(calls) == 2
    # Rows padded by a part of a pixel, which cv_bridge would shear: the numpy way, exact.
    np.testing.assert_array_equal(image_to_rgb(hand_built(RGB, "rgb8", pad=1)), RGB)
    np.testing.assert_array_equal(image_to_rgb(hand_built(RGB[..., ::-1], "bgr8", pad=3)), RGB)
    assert len(calls) == 2


def test_a_jpeg_of_thousands_of_scans_is_refused_as_a_malformed_image():
    msg = CompressedImage(format="jpeg", data=jpeg_scan_bomb(64, 48, 3000))
    with pytest.raises(ImageDecodeError, match="JPEG of 3009 scans exceeds the limit of 100"):
        compressed_to_rgb(msg)
