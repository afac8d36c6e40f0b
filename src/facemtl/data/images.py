"""Image files in: the one decoder behind every dataset reader and the predictor.

A file is read as bytes and decoded by OpenCV (``cv2.imdecode``), so paths with spaces or
non-ASCII characters work on every platform (``cv2.imread`` fails on some of them). A file
that is missing, unreadable or not an image raises :class:`DecodeError`, a FacemtlError whose
one-line message names the file and what was expected. Dataset readers let
:class:`~facemtl.data.formats.common.LazyDataset` skip such items; the predictor reports them
per image.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facemtl.errors import FacemtlError

_EXPECTED = "expected JPEG, PNG, BMP, TIFF, WebP ..."


class DecodeError(FacemtlError):
    """An image (or mask) file that cannot be read or decoded; the message names the file."""


def quiet_opencv() -> None:
    """Silence OpenCV's own log lines below FATAL: they ("imdecode_(''): can't read header ...")
    would repeat, unasked and without the file name, what :class:`DecodeError` says with it.
    OpenCV's Python API for this moved: ``cv2.utils.logging`` from 4.13, ``cv2.setLogLevel``
    before (the ``detect`` extra's mediapipe pins numpy < 2 and with it OpenCV 4.11)."""
    logging = getattr(cv2.utils, "logging", None)
    if logging is not None:
        logging.setLogLevel(logging.LOG_LEVEL_FATAL)
    elif hasattr(cv2, "setLogLevel"):
        cv2.setLogLevel(1)  # cv::utils::logging::LOG_LEVEL_FATAL


def _decode(path, flag: int) -> np.ndarray:
    path = Path(path)
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError as exc:
        # Stat only after a failure: the common case (a good file) costs one open.
        if path.is_dir():
            raise DecodeError(f"{path}: is a folder, not an image file") from None
        if not path.exists():
            raise DecodeError(f"{path}: no such file") from None
        raise DecodeError(f"{path}: cannot read ({exc.strerror or exc})") from None
    from facemtl.data.image_header import decode_within_limit  # refuses huge images from the header

    image = decode_within_limit(path, data, flag) if data.size else None
    if image is None or image.size == 0:
        raise DecodeError(f"{path}: not an image OpenCV can read ({_EXPECTED})")
    return image


def read_image(path) -> np.ndarray:
    """An image file -> H x W x 3 uint8 RGB (gray and RGBA files are converted)."""
    return cv2.cvtColor(_decode(path, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def read_gray(path) -> np.ndarray:
    """A single-channel image file (a label mask) -> H x W uint8."""
    return _decode(path, cv2.IMREAD_GRAYSCALE)
