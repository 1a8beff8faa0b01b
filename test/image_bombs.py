"""Hostile image files for tests: small files whose headers claim huge images, corrupt ones."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bomb(width: int, height: int) -> bytes:
    """A valid RGB PNG of zeros: about 1/1000 of its decoded size (20000x20000: 1.2 MB file)."""
    z = zlib.compressobj(9)
    row = bytes(1 + 3 * width)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat)
            + _chunk(b"IEND", b""))


def jpeg_claiming(width: int, height: int) -> bytes:
    """A 16x16 JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def corrupt_images(count: int, seed: int = 1) -> list[bytes]:
    """PNGs and JPEGs (alternately) cut short, with bytes overwritten, or with a random body."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), (5, 5), 0)
    good = [cv2.imencode(ext, image)[1].tobytes() for ext in (".png", ".jpg")]
    frames = []
    for k in range(count):
        data = bytearray(good[k % 2])
        if k % 3 == 0:
            data = data[:rng.integers(10, len(data))]
        elif k % 3 == 1:
            for _ in range(5):
                data[rng.integers(0, len(data))] = rng.integers(0, 256)
        else:
            data = data[:20] + rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
        frames.append(bytes(data))
    return frames


def _segments(data: bytes) -> list[bytes]:
    """A JPEG's marker segments (a scan with its entropy-coded data), SOI and EOI included."""
    pos, segments = 2, [data[:2]]
    while pos < len(data):
        marker = data[pos + 1]
        if marker == 0xD9:
            segments.append(data[pos:pos + 2])
            break
        end = pos + 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
        if marker == 0xDA:  # entropy-coded data up to the next marker other than FF00, RSTn
            while not (data[end] == 0xFF and data[end + 1] != 0
                       and not 0xD0 <= data[end + 1] <= 0xD7):
                end += 1
        segments.append(data[pos:end])
        pos = end
    return segments


def progressive_jpeg(width: int, height: int) -> bytes:
    """A flat grey progressive JPEG (Pillow, libjpeg's scan script: 10 scans)."""
    import io

    from PIL import Image
    out = io.BytesIO()
    Image.new("RGB", (width, height), (120, 130, 140)).save(out, "JPEG", progressive=True,
                                                            quality=50)
    return out.getvalue()


def jpeg_scan_bomb(width: int, height: int, repeats: int) -> bytes:
    """A progressive JPEG whose last scan (an AC refinement, tiny for a flat image) comes
    ``repeats`` times: a small valid file whose decoding passes over the image once a scan."""
    segments = _segments(progressive_jpeg(width, height))
    last = max(k for k, s in enumerate(segments) if s[1] == 0xDA)
    return b"".join(segments[:last] + [segments[last]] * repeats + segments[last + 1:])
