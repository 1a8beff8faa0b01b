"""PNG and JPEG bytes -> RGB pixels, refusing images too large to decode before decoding them.

A 389 KB PNG can claim 20000x20000 pixels (1.2 GB decoded); the size is read from the file's
header and checked against a pixel limit before any pixel memory is allocated. Decoding is done
by Pillow (the same libpng/libjpeg-turbo results as OpenCV's ``imdecode(IMREAD_COLOR)``, checked
in the tests), which reports corrupt data as exceptions instead of printing to the C stderr as
OpenCV's decoders do. No ROS here: the node's codec and the training datasets both use it.
"""
from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from PIL import ImageFile, JpegImagePlugin, PngImagePlugin

# The default pixel limit (4096x4096); EverythingSettings.max_image_pixels starts from it.
MAX_IMAGE_PIXELS = 16_777_216
# File signature -> Pillow's reader for it. The readers are used directly (not Image.open) so
# that Pillow's own decompression-bomb limit does not pre-empt ours with a message that omits
# the dimensions; ours is lower than Pillow's anyway.
_READERS: tuple[tuple[bytes, type[ImageFile.ImageFile]], ...] = (
    (b"\x89PNG\r\n\x1a\n", PngImagePlugin.PngImageFile),
    (b"\xff\xd8\xff", JpegImagePlugin.JpegImageFile),
)


class ImageError(ValueError):
    """Bytes that are not a decodable PNG/JPEG, or an image over the pixel limit."""


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """ImageError naming the dimensions and the limit if ``width * height > max_pixels``."""
    if width * height > max_pixels:
        raise ImageError(f"image of {width}x{height} = {width * height} pixels exceeds the "
                         f"limit max_image_pixels = {max_pixels}; refused before decoding")


def open_header(stream: BinaryIO) -> ImageFile.ImageFile:
    """A PNG or JPEG with only its header read (``.size``, ``.mode``); pixels load on demand."""
    head = stream.read(8)
    stream.seek(0)
    reader = next((r for magic, r in _READERS if head.startswith(magic)), None)
    if reader is None:
        raise ImageError("neither a PNG nor a JPEG (no PNG or JPEG signature)")
    try:
        return reader(stream)
    except Exception as err:  # Pillow's parsers raise many types for hostile headers
        raise ImageError(f"unreadable {reader.format} header: {type(err).__name__}: {err}") \
            from None


def _to_rgb(img: ImageFile.ImageFile) -> np.ndarray:
    """uint8 HxWx3 as OpenCV's IMREAD_COLOR gives it (16-bit grey keeps its high byte)."""
    if img.mode.startswith("I"):  # 16-bit greyscale PNG
        grey = (np.asarray(img).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.array(img.convert("RGB"))


def decode_rgb(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """uint8 HxWx3 RGB pixels of a PNG or JPEG; ImageError saying why when that is impossible."""
    with open_header(io.BytesIO(data)) as img:
        width, height = img.size
        if width == 0 or height == 0:
            raise ImageError(f"empty {img.format} image ({width}x{height})")
        check_pixels(width, height, max_pixels)
        try:
            img.load()
            return _to_rgb(img)
        except Exception as err:  # truncated or corrupt data: Pillow raises, never prints
            raise ImageError(f"corrupt {img.format} data: {type(err).__name__}: {err}") from None
