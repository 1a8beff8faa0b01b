"""image_decode: OpenCV's pixels from Pillow, the pixel limit checked on the header, no stderr."""
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from image_bombs import jpeg_claiming, png_bomb
from saom_ros.image_decode import ImageError, decode_rgb

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


@pytest.mark.parametrize("data, dims", [
    (png_bomb(2000, 1500), "2000x1500 = 3000000 pixels"),
    (jpeg_claiming(30000, 30000), "30000x30000 = 900000000 pixels"),
])
def test_images_over_the_limit_are_refused_from_the_header(data, dims):
    start = time.perf_counter()
    with pytest.raises(ImageError) as err:
        decode_rgb(data, max_pixels=1_000_000)
    assert time.perf_counter() - start < 0.5  # nothing was decoded
    assert dims in str(err.value) and "max_image_pixels = 1000000" in str(err.value)


def test_an_image_at_the_limit_decodes():
    assert decode_rgb(png_bomb(1000, 1000), max_pixels=1_000_000).shape == (1000, 1000, 3)


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
