"""Decoding the face member: JPEG bytes -> ``torch.uint8`` tensor H x W x 3 (RGB, 0..255).

Shared by the streaming reader and the random-access reader; imports torch,
so writers and ``verify`` never import it.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def decode_face(data: bytes) -> torch.Tensor:
    """JPEG bytes -> ``torch.uint8`` tensor H x W x 3, RGB, 0..255."""
    image = Image.open(io.BytesIO(data), formats=["JPEG"])
    if image.mode != "RGB":
        image = image.convert("RGB")
    return torch.from_numpy(np.array(image))


__all__ = ["decode_face"]
