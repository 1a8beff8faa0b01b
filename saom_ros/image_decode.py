"""PNG and JPEG bytes -> RGB pixels, refusing images too large to decode before decoding them.

A 389 KB PNG can claim 20000x20000 pixels (1.2 GB decoded); the size is read from the file's
header and checked against a pixel limit before any pixel memory is allocated. Decoding is done
by Pillow (the same libpng/libjpeg-turbo results as OpenCV's ``imdecode(IMREAD_COLOR)``, checked
in the tests), which reports corrupt data as exceptions instead of printing to the C stderr as
OpenCV's decoders do. No ROS here: the node's codec and the training datasets both use it.

A progressive JPEG is decoded scan by scan, each scan a pass over the whole image, and a file may
repeat a tiny scan thousands of times: 200 KB of 4096x4096 with 3000 scans took 29 s to decode.
libjpeg has no limit of its own (libjpeg-turbo's TurboJPEG API has an opt-in one, which its
fuzzers set to 500); JPEGs with more than MAX_JPEG_SCANS scans are refused before decoding.
"""
from __future__ import annotations

import io
from typing import BinaryIO

import numpy as np
from PIL import ImageFile, JpegImagePlugin, PngImagePlugin

# The default pixel limit (4096x4096); EverythingSettings.max_image_pixels starts from it.
MAX_IMAGE_PIXELS = 16_777_216
# Scans a JPEG may have. libjpeg's progressive JPEGs have 10 (colour) or 6 (greyscale), a
# baseline JPEG 1; ten times the most common count is generous and bounds the decoding time:
# 100 scans of 4096x4096 took 2.7 s on a busy 2-core machine (one scan 10-25 ms).
MAX_JPEG_SCANS = 100
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


def jpeg_scans(data: bytes) -> int:
    """The number of scans (SOS markers, 0xFFDA) of a JPEG, counted from its first scan on.

    Entropy-coded data cannot hold a marker (a 0xFF data byte is stuffed as 0xFF00), so every
    0xFFDA from the first scan on starts a scan. Before it, metadata segments (EXIF with its
    thumbnail, ICC profiles) may hold any bytes: their lengths are skipped."""
    pos = 2  # after SOI
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xDA:
            break
        if marker == 0xFF:  # a fill byte before a marker
            pos += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # TEM, RSTn, SOI: no length
            pos += 2
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return data.count(b"\xff\xda", pos)


def check_jpeg_scans(data: bytes, max_scans: int = MAX_JPEG_SCANS) -> None:
    """ImageError if the JPEG ``data`` has more than ``max_scans`` scans."""
    scans = jpeg_scans(data)
    if scans > max_scans:
        raise ImageError(f"JPEG of {scans} scans exceeds the limit of {max_scans} (a progressive "
                         f"JPEG has about 10; each scan is a pass over the whole image); refused "
                         f"before decoding")


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
        if img.format == "JPEG":
            check_jpeg_scans(data)
        try:
            img.load()
            return _to_rgb(img)
        except Exception as err:  # truncated or corrupt data: Pillow raises, never prints
            raise ImageError(f"corrupt {img.format} data: {type(err).__name__}: {err}") from None
