"""image_decode: OpenCV's pixels from Pillow, the pixel limit checked on the header, JPEGs of
absurdly many scans refused before decoding, no stderr."""
import contextlib
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from image_bombs import jpeg_claiming, jpeg_scan_bomb, png_bomb, progressive_jpeg
from saom_ros.image_decode import MAX_JPEG_SCANS, ImageError, decode_rgb, jpeg_scans

RNG = np.random.default_rng(0)
BGR = cv2.resize(RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8), (161, 119))


def _pil_png(pixels: np.ndarray, **convert) -> bytes:
    import io
    out = io.BytesIO()
    Image.fromarray(pixels).convert(**convert).save(out, "PNG")
    return out.getvalue()


ENCODED = {
    "jpeg q30": cv2.imencode(".jpg", BGR, [cv2.IMWRITE_JPEG_QUALITY, 30])[1],
    "jpeg q95 4:4:4": cv2.imencode(".jpg", BGR, [cv2.IMWRITE_JPEG_QUALITY, 95,
                                                cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                                                cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])[1],
    "jpeg progressive": cv2.imencode(".jpg", BGR, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1],
    "jpeg grey": cv2.imencode(".jpg", BGR[..., 0])[1],
    "png rgb": cv2.imencode(".png", BGR)[1],
    "png grey": cv2.imencode(".png", BGR[..., 0])[1],
    "png rgba": cv2.imencode(".png", np.dstack([BGR, BGR[..., :1]]))[1],
    "png 16-bit rgb": cv2.imencode(".png", BGR.astype(np.uint16) * 257 + 7)[1],
    "png 16-bit grey": cv2.imencode(".png", BGR[..., 0].astype(np.uint16) * 257 + 7)[1],
    "png palette": _pil_png(BGR, mode="P", palette=Image.Palette.ADAPTIVE, colors=64),
}


@pytest.mark.parametrize("name", list(ENCODED))
def test_pixels_equal_opencv_imdecode(name):
    data = bytes(ENCODED[name])
    expected = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                            cv2.COLOR_BGR2RGB)
    out = decode_rgb(data)
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, expected)


# Pillow's pixel decoding: every reader decodes in ImageFile.load (neither plugin overrides it).
PILLOW_DECODE = ImageFile.ImageFile.load.__code__


@contextlib.contextmanager
def _entered() -> Iterator[set]:
    """The code objects of the Python functions called meanwhile in this thread, as
    sys.setprofile reports them (nothing is replaced)."""
    codes = set()

    def profile(frame, event, arg):
        if event == "call":
            codes.add(frame.f_code)
    previous = sys.getprofile()
    sys.setprofile(profile)
    try:
        yield codes
    finally:
        sys.setprofile(previous)


@pytest.mark.parametrize("data, dims", [
    (png_bomb(2000, 1500), "2000x1500 = 3000000 pixels"),
    (jpeg_claiming(30000, 30000), "30000x30000 = 900000000 pixels"),
])
def test_images_over_the_limit_are_refused_from_the_header(data, dims):
    with _entered() as entered, pytest.raises(ImageError) as err:
        decode_rgb(data, max_pixels=1_000_000)
    assert PILLOW_DECODE not in entered  # nothing was decoded
    assert dims in str(err.value) and "max_image_pixels = 1000000" in str(err.value)


def test_an_image_at_the_limit_decodes():
    with _entered() as entered:
        assert decode_rgb(png_bomb(1000, 1000), max_pixels=1_000_000).shape == (1000, 1000, 3)
    assert PILLOW_DECODE in entered  # where the refused ones never get


@pytest.mark.parametrize("data, words", [
    (b"", "neither a PNG nor a JPEG"),
    (b"GIF89a" + bytes(20), "neither a PNG nor a JPEG"),
    (bytes(ENCODED["png rgb"])[:30], "PNG"),
    (bytes(ENCODED["jpeg q30"])[:-400], "corrupt JPEG data"),
    (png_bomb(0, 5), "PNG"),
])
def test_bad_bytes_raise_image_errors(data, words):
    with pytest.raises(ImageError, match=words):
        decode_rgb(data)


def test_corrupt_images_print_nothing_on_the_c_stderr():
    """libpng/libjpeg (as OpenCV calls them) print a line for many corrupt images; we do not."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from image_bombs import corrupt_images
        from saom_ros.image_decode import ImageError, decode_rgb
        refused = 0
        for data in corrupt_images(300):
            try:
                decode_rgb(data)
            except ImageError:
                refused += 1
        print(refused)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert int(run.stdout) > 200  # most of the 300 were corrupt enough to refuse
    assert run.stderr == ""


def test_scans_are_counted_from_the_first_scan_on():
    assert jpeg_scans(bytes(ENCODED["jpeg q30"])) == 1
    assert jpeg_scans(bytes(ENCODED["jpeg progressive"])) == 10  # libjpeg's colour script
    assert jpeg_scans(bytes(ENCODED["jpeg grey"])) == 1
    # Metadata before the first scan may hold 0xFFDA bytes (an EXIF thumbnail's own scans, an
    # ICC profile): its segments are skipped by their lengths.
    data = bytes(ENCODED["jpeg progressive"])
    comment = b"\xff\xda" * 5000
    with_metadata = data[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment \
        + data[2:]
    assert jpeg_scans(with_metadata) == 10
    np.testing.assert_array_equal(decode_rgb(with_metadata), decode_rgb(data))


def test_a_jpeg_at_the_scan_limit_decodes():
    data = jpeg_scan_bomb(64, 48, MAX_JPEG_SCANS - 9)  # 9 scans + the last one repeated
    assert jpeg_scans(data) == MAX_JPEG_SCANS
    assert decode_rgb(data).shape == (48, 64, 3)


def test_a_progressive_jpeg_of_thousands_of_scans_is_refused_before_decoding():
    """200 KB of 4096x4096 with 3000 scans took ~29 s to decode (one pass over the image a
    scan); refused from the count of its scans."""
    plain = progressive_jpeg(4096, 4096)
    bomb = jpeg_scan_bomb(4096, 4096, 3000)
    assert len(plain) < 100_000 and len(bomb) < 200_000
    with _entered() as entered, pytest.raises(
            ImageError, match=r"JPEG of 3009 scans exceeds the limit of 100 \(a progressive "
                              r"JPEG has about 10"):
        decode_rgb(bomb)
    assert PILLOW_DECODE not in entered  # nothing was decoded
