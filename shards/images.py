"""Cheap checks and deterministic encoding of the image payloads."""

from __future__ import annotations

import io

import numpy as np

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(data: bytes) -> tuple[int, int, int]:
    """(width, height, components) from a JPEG's frame header, without decoding pixels.

    Raises ValueError when ``data`` is not a JPEG or has no frame header.
    """
    if data[:3] != b"\xff\xd8\xff":
        raise ValueError("not a JPEG (missing FFD8FF start marker)")
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise ValueError(f"corrupt JPEG: expected a marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _SOF_MARKERS:
            if pos + 10 > end:
                break
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            return width, height, data[pos + 9]
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise ValueError("corrupt JPEG: no frame header found")


def image_ext(data: bytes) -> str:
    """'png' or 'jpg' from the magic bytes; ValueError for anything else."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    raise ValueError("full image must be PNG or JPEG bytes")


def encode_face_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an RGB uint8 HxWx3 array as JPEG with fixed settings (same array, same bytes).

    4:2:0 chroma subsampling and no optimisation pass, so the bytes depend only
    on the pixels, the quality and the Pillow/libjpeg version.
    """
    from PIL import Image

    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3 RGB, got {rgb.dtype} {rgb.shape}")
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, "JPEG", quality=quality, subsampling=2, optimize=False)
    return buf.getvalue()
