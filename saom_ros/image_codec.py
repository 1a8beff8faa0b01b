"""sensor_msgs Image / CompressedImage <-> numpy, with cv_bridge's semantics.

cv_bridge does the raw-image conversion of unpadded rows where it is installed; elsewhere (e.g. a
venv built from ROS wheels, which have no cv_bridge), and for rows with padding, the same
conversion is done here with numpy. Every message is
validated first, so both paths reject the same malformed images with the same ``ImageDecodeError``.
Images over a pixel limit are refused from their header fields (raw) or file header (compressed)
before any pixel memory is allocated. Compressed images are decoded by ``image_decode`` (Pillow:
OpenCV's pixels, without the decoders' own output on the C stderr for corrupt data).
"""
from __future__ import annotations

import array
import sys

import cv2
import numpy as np
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from saom_ros.image_decode import MAX_IMAGE_PIXELS, ImageError, check_pixels, decode_rgb

try:  # cv_bridge ships with ROS distributions, not with the wheels.
    from cv_bridge import CvBridge, CvBridgeError
except ImportError:
    CvBridge, CvBridgeError = None, ()  # () : an except clause that catches nothing

# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[str, int]] = {
    "rgb8": ("uint8", 3), "bgr8": ("uint8", 3), "rgba8": ("uint8", 4), "bgra8": ("uint8", 4),
    "mono8": ("uint8", 1), "8UC1": ("uint8", 1), "8UC3": ("uint8", 3),
    "mono16": ("uint16", 1), "16UC1": ("uint16", 1), "32FC1": ("float32", 1),
}
# The encodings that can become an RGB image for the model, and OpenCV's conversion to RGB.
_TO_RGB: dict[str, int | None] = {
    "rgb8": None, "bgr8": cv2.COLOR_BGR2RGB, "rgba8": cv2.COLOR_RGBA2RGB,
    "bgra8": cv2.COLOR_BGRA2RGB, "mono8": cv2.COLOR_GRAY2RGB,
}
RGB_ENCODINGS: tuple[str, ...] = tuple(_TO_RGB)
COMPRESSED_FORMATS: tuple[str, ...] = ("jpeg", "png")


class ImageDecodeError(ValueError):
    """A message that cannot be turned into an image; the text says what is wrong with it."""


def backend() -> str:
    """What converts raw images: "cv_bridge" where it is installed, else "numpy"."""
    return "numpy" if CvBridge is None else "cv_bridge"


def _check_layout(msg: Image, max_pixels: int, supported: tuple[str, ...] = tuple(ENCODINGS)
                  ) -> tuple[np.dtype, int]:
    if msg.encoding not in supported:
        raise ImageDecodeError(f"unsupported encoding {msg.encoding!r}; supported: "
                               f"{', '.join(supported)}")
    dtype_name, channels = ENCODINGS[msg.encoding]
    dtype = np.dtype(dtype_name).newbyteorder(">" if msg.is_bigendian else "<")
    if msg.width == 0 or msg.height == 0:
        raise ImageDecodeError(f"empty image ({msg.width}x{msg.height})")
    try:
        check_pixels(msg.width, msg.height, max_pixels)
    except ImageError as err:
        raise ImageDecodeError(str(err)) from None
    row_bytes = msg.width * channels * dtype.itemsize
    # Row padding counts too: the copy made below is step * height bytes.
    if msg.step * msg.height > max_pixels * channels * dtype.itemsize:
        raise ImageDecodeError(f"step*height = {msg.step}*{msg.height} bytes exceeds the "
                               f"{max_pixels * channels * dtype.itemsize} bytes of "
                               f"max_image_pixels = {max_pixels} {msg.encoding} pixels")
    if msg.step < row_bytes:
        raise ImageDecodeError(f"step {msg.step} is less than width*channels*bytes = {row_bytes} "
                               f"for a {msg.width}-pixel {msg.encoding} row")
    if msg.step % dtype.itemsize:
        raise ImageDecodeError(f"step {msg.step} is not a multiple of the {dtype.itemsize}-byte "
                               f"pixel element of {msg.encoding}")
    if len(msg.data) < msg.step * msg.height:
        raise ImageDecodeError(f"data holds {len(msg.data)} bytes, step*height needs "
                               f"{msg.step * msg.height} ({msg.width}x{msg.height} {msg.encoding})")
    return dtype, channels


def check_image(msg: Image, max_pixels: int = MAX_IMAGE_PIXELS,
                encodings: tuple[str, ...] = tuple(ENCODINGS)) -> None:
    """ImageDecodeError if ``image_to_array(msg, max_pixels)`` would refuse ``msg`` or its
    encoding is not one of ``encodings``; copies nothing (a check on arrival)."""
    _check_layout(msg, max_pixels, encodings)


def image_to_array(msg: Image, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """The pixels as stored (cv_bridge's ``passthrough``): HxW or HxWxC, native byte order, a copy.

    Row padding (``step > width * channels * bytes``) is dropped; trailing bytes are ignored.
    """
    dtype, channels = _check_layout(msg, max_pixels)
    rows = np.frombuffer(msg.data, dtype=np.uint8, count=msg.step * msg.height)
    rows = rows.reshape(msg.height, msg.step)[:, :msg.width * channels * dtype.itemsize]
    pixels = rows.copy().view(dtype).astype(dtype.newbyteorder("="), copy=False)
    shape = (msg.height, msg.width) if channels == 1 else (msg.height, msg.width, channels)
    return pixels.reshape(shape)


def image_to_rgb(msg: Image, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """``imgmsg_to_cv2(msg, 'rgb8')``: uint8 HxWx3 RGB from an rgb8/bgr8/rgba8/bgra8/mono8 image."""
    dtype, channels = _check_layout(msg, max_pixels, RGB_ENCODINGS)
    # cv_bridge views the buffer as rows of step // pixel-size whole pixels: rows padded by a
    # part of a pixel (rgb8, width 65, step 196) would come out sheared, without an error.
    # Padded rows go the numpy way, which drops the padding byte-exactly.
    if CvBridge is not None and msg.step == msg.width * channels * dtype.itemsize:
        try:
            return CvBridge().imgmsg_to_cv2(msg, desired_encoding="rgb8")
        except CvBridgeError as err:
            raise ImageDecodeError(str(err)) from None
    pixels = image_to_array(msg, max_pixels)
    code = _TO_RGB[msg.encoding]
    return pixels if code is None else cv2.cvtColor(pixels, code)


def compressed_to_rgb(msg: CompressedImage, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """uint8 HxWx3 RGB from a jpeg or png CompressedImage (image_transport's ``compressed``)."""
    fmt = msg.format.lower()
    # image_transport writes "jpeg", "png" or e.g. "bgr8; jpeg compressed bgr8"; empty: sniff.
    if fmt and not any(name in fmt for name in (*COMPRESSED_FORMATS, "jpg")):
        raise ImageDecodeError(f"unsupported compressed format {msg.format!r}; supported: "
                               f"{', '.join(COMPRESSED_FORMATS)}")
    if "compresseddepth" in fmt:
        raise ImageDecodeError(f"compressedDepth images are not supported ({msg.format!r})")
    try:
        return decode_rgb(bytes(msg.data), max_pixels)
    except ImageError as err:
        raise ImageDecodeError(f"could not decode {len(msg.data)} bytes of "
                               f"{msg.format or 'compressed'} data: {err}") from None


def array_to_image(pixels: np.ndarray, encoding: str, header: Header | None = None) -> Image:
    """``cv2_to_imgmsg``: a contiguous, unpadded Image in the machine's byte order."""
    if encoding not in ENCODINGS:
        raise ValueError(f"unsupported encoding {encoding!r}; supported: {', '.join(ENCODINGS)}")
    dtype_name, channels = ENCODINGS[encoding]
    expected_ndim = 2 if channels == 1 else 3
    if (pixels.dtype != np.dtype(dtype_name) or pixels.ndim != expected_ndim
            or (channels > 1 and pixels.shape[2] != channels)):
        raise ValueError(f"{encoding} needs a {dtype_name} array of shape (H, W"
                         f"{'' if channels == 1 else f', {channels}'}), got {pixels.dtype} "
                         f"{pixels.shape}")
    pixels = np.ascontiguousarray(pixels)
    msg = Image(header=header if header is not None else Header(), height=pixels.shape[0],
                width=pixels.shape[1], encoding=encoding, is_bigendian=sys.byteorder == "big",
                step=pixels.shape[1] * channels * pixels.itemsize)
    # An array.array('B') skips the per-element check older rclpy runs on other sequences.
    msg.data = array.array("B", pixels.tobytes())
    return msg
