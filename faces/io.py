"""Decoding images into the one array convention of faces/: RGB, uint8, H x W x 3.

Every failure names the file, so a bad image in a million-image run is a
recorded reject with a reason instead of an anonymous crash.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from facefoundry.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class FaceImageError(UsageError, ValueError):
    """An input that is not a decodable image; the message names the file."""


def decode_image(data: bytes, name: str) -> np.ndarray:
    """Decode encoded image bytes to RGB uint8 (H, W, 3); grey and RGBA are converted."""
    if not data:
        raise FaceImageError(f"{name}: empty file (0 bytes), not an image")
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)  # BGR, alpha dropped, grey expanded
    except cv2.error as error:  # e.g. a header claiming more pixels than OpenCV allows
        first = str(error).strip().splitlines()[-1][:160]
        raise FaceImageError(f"{name}: refused by the image decoder ({first})") from None
    if image is None or image.size == 0:
        raise FaceImageError(
            f"{name}: cannot be decoded as an image ({len(data)} bytes; corrupt, truncated "
            "or not an image format OpenCV reads)"
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_image(path: str | Path) -> np.ndarray:
    """Read and decode one image file to RGB uint8, with a clear error naming it."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise FaceImageError(f"{path}: cannot be read ({error.strerror or error})") from error
    return decode_image(data, str(path))


def as_rgb_uint8(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Check an in-memory image follows the convention; raise a clear error if not."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise FaceImageError(f"{name}: expected a uint8 numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 8:
        raise FaceImageError(f"{name}: expected an RGB image H x W x 3, got shape {image.shape}")
    return image
