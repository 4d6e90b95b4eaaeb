"""Training augmentations for aligned faces: horizontal flip and RandAugment(N, M).

torchvision is not part of the environment (its wheel clashes with the CPU torch), so
RandAugment is written on PIL: N operations drawn uniformly per image from the
RandAugment list, each at magnitude M of 30 (IDiff-Face's recipe: N=4, M=16), with a
random sign for signed operations. Inputs and outputs are RGB uint8 H x W x 3.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

MAX_MAGNITUDE = 30


def _signed(value: float, rng: np.random.Generator) -> float:
    return value if rng.random() < 0.5 else -value


def _affine(image: Image.Image, matrix: tuple) -> Image.Image:
    return image.transform(
        image.size, Image.AFFINE, matrix, resample=Image.BILINEAR, fillcolor=(128, 128, 128)
    )


def _ops(level: float, rng: np.random.Generator, size: int) -> dict:
    """Each op at strength ``level`` in 0..1, following RandAugment's ranges."""
    return {
        "identity": lambda im: im,
        "shear_x": lambda im: _affine(im, (1, _signed(0.3 * level, rng), 0, 0, 1, 0)),
        "shear_y": lambda im: _affine(im, (1, 0, 0, _signed(0.3 * level, rng), 1, 0)),
        "translate_x": lambda im: _affine(im, (1, 0, _signed(0.45 * size * level, rng), 0, 1, 0)),
        "translate_y": lambda im: _affine(im, (1, 0, 0, 0, 1, _signed(0.45 * size * level, rng))),
        "rotate": lambda im: im.rotate(
            _signed(30 * level, rng), resample=Image.BILINEAR, fillcolor=(128, 128, 128)
        ),
        "brightness": lambda im: ImageEnhance.Brightness(im).enhance(1 + _signed(0.9 * level, rng)),
        "color": lambda im: ImageEnhance.Color(im).enhance(1 + _signed(0.9 * level, rng)),
        "contrast": lambda im: ImageEnhance.Contrast(im).enhance(1 + _signed(0.9 * level, rng)),
        "sharpness": lambda im: ImageEnhance.Sharpness(im).enhance(1 + _signed(0.9 * level, rng)),
        "posterize": lambda im: ImageOps.posterize(im, int(8 - round(4 * level))),
        "solarize": lambda im: ImageOps.solarize(im, int(256 - 256 * level)),
        "autocontrast": ImageOps.autocontrast,
        "equalize": ImageOps.equalize,
    }


class RandAugment:
    """``num_ops`` random operations at ``magnitude`` (0..30) per image."""

    def __init__(self, num_ops: int = 4, magnitude: int = 16, seed: int | None = None):
        if not 0 <= magnitude <= MAX_MAGNITUDE:
            raise ValueError(f"magnitude must be in 0..{MAX_MAGNITUDE}, got {magnitude}")
        self.num_ops, self.level = num_ops, magnitude / MAX_MAGNITUDE
        self.rng = np.random.default_rng(seed)

    def __call__(self, face: np.ndarray) -> np.ndarray:
        image = Image.fromarray(face)
        ops = _ops(self.level, self.rng, face.shape[0])
        names = list(ops)
        for index in self.rng.integers(0, len(names), self.num_ops):
            image = ops[names[index]](image)
        return np.asarray(image, dtype=np.uint8)


def augment_batch(
    faces: np.ndarray,
    rng: np.random.Generator,
    hflip: bool = True,
    randaugment: RandAugment | None = None,
) -> np.ndarray:
    """Flip each face with probability 0.5 and apply RandAugment if given."""
    out = np.empty_like(faces)
    for index, face in enumerate(faces):
        if hflip and rng.random() < 0.5:
            face = face[:, ::-1]
        out[index] = randaugment(np.ascontiguousarray(face)) if randaugment else face
    return out
