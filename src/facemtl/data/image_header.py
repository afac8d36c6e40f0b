"""Image dimensions from the file header, so a huge image is refused before it is decoded.

A few hundred kilobytes of PNG can declare 30000 x 30000 pixels, which OpenCV would decode
into 2.7 GB (and the predictor would copy several times). OpenCV cannot read a header alone,
so :func:`header_size` parses the first bytes of PNG, JPEG, BMP, WebP and PNM (PPM/PGM/PBM)
files itself; other formats (TIFF, JPEG 2000, ...) are decoded and checked afterwards.

The limit is :data:`MAX_IMAGE_PIXELS` (100 megapixels, e.g. 12000 x 8000), or the environment
variable ``FACEMTL_MAX_IMAGE_PIXELS`` when set (a positive integer).
"""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np

from facemtl.errors import FacemtlError

MAX_IMAGE_PIXELS = 100_000_000
ENV_LIMIT = "FACEMTL_MAX_IMAGE_PIXELS"

# JPEG start-of-frame markers (they hold the size); C4 (DHT), C8 (JPG) and CC (DAC) are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def max_image_pixels() -> int:
    value = os.environ.get(ENV_LIMIT)
    if value is None or value.strip() == "":
        return MAX_IMAGE_PIXELS
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if limit <= 0:
        raise FacemtlError(f"environment variable {ENV_LIMIT}={value!r}: expected a positive number of pixels")
    return limit


def header_size(data) -> tuple[int, int] | None:
    """``(width, height)`` read from the header of a PNG, JPEG, BMP, WebP or PNM file's bytes;
    None for another format or a header too short or malformed to say."""
    b = bytes(memoryview(data)[:65536]) if not isinstance(data, bytes) else data
    try:
        if b[:8] == b"\x89PNG\r\n\x1a\n" and b[12:16] == b"IHDR":
            return struct.unpack(">II", b[16:24])
        if b[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if b[:2] == b"BM":
            (dib,) = struct.unpack("<I", b[14:18])
            if dib == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
                return struct.unpack("<HH", b[18:22])
            w, h = struct.unpack("<ii", b[18:26])
            return abs(w), abs(h)  # a negative height means top-down rows
        if b[:4] == b"RIFF" and b[8:12] == b"WEBP":
            return _webp_size(b)
        if len(b) > 2 and b[0:1] == b"P" and b[1:2] in b"123456":
            return _pnm_size(b)
    except struct.error:  # header cut short
        return None
    return None


def _jpeg_size(data) -> tuple[int, int] | None:
    """Walk the marker segments up to the first start-of-frame (the size comes before any scan)."""
    b = memoryview(data)
    i, n = 2, len(b)
    while i + 4 <= n:
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # no length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or a scan before any frame header
            return None
        (length,) = struct.unpack(">H", bytes(b[i + 2 : i + 4]))
        if marker in _JPEG_SOF:
            h, w = struct.unpack(">HH", bytes(b[i + 5 : i + 9]))
            return w, h
        i += 2 + length
    return None


def _webp_size(b: bytes) -> tuple[int, int] | None:
    chunk = b[12:16]
    if chunk == b"VP8X":
        w = int.from_bytes(b[24:27], "little") + 1
        h = int.from_bytes(b[27:30], "little") + 1
        return w, h
    if chunk == b"VP8L" and b[20] == 0x2F:
        bits = int.from_bytes(b[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and b[23:26] == b"\x9d\x01\x2a":
        w, h = struct.unpack("<HH", b[26:30])
        return w & 0x3FFF, h & 0x3FFF
    return None


def _pnm_size(b: bytes) -> tuple[int, int] | None:
    """The first two numbers after the magic, skipping whitespace and ``#`` comments."""
    numbers: list[int] = []
    i, n = 2, len(b)
    while len(numbers) < 2 and i < n:
        c = b[i : i + 1]
        if c == b"#":
            while i < n and b[i : i + 1] not in (b"\n", b"\r"):
                i += 1
        elif c.isspace():
            i += 1
        elif c.isdigit():
            j = i
            while j < n and b[j : j + 1].isdigit():
                j += 1
            numbers.append(int(b[i:j]))
            i = j
        else:
            return None
    return (numbers[0], numbers[1]) if len(numbers) == 2 else None


def _too_large(path, width: int, height: int, limit: int) -> str:
    return (f"{path}: image is {width} x {height} = {width * height / 1e6:.1f} megapixels; facemtl reads images of "
            f"at most {limit / 1e6:g} megapixels (set {ENV_LIMIT} to change the limit)")


def decode_within_limit(path, data: np.ndarray, flag: int) -> np.ndarray | None:
    """``cv2.imdecode(data, flag)``, refusing an image above the pixel limit: from its header
    before decoding when the format is one :func:`header_size` reads, else after decoding.
    Raises :class:`facemtl.data.images.DecodeError` naming the file, its size and the limit."""
    from facemtl.data.images import DecodeError

    limit = max_image_pixels()
    size = header_size(data)
    if size is not None and size[0] * size[1] > limit:
        raise DecodeError(_too_large(path, size[0], size[1], limit))
    image = cv2.imdecode(data, flag)
    if image is not None and image.shape[0] * image.shape[1] > limit:
        raise DecodeError(_too_large(path, image.shape[1], image.shape[0], limit))
    return image
