"""insightface ``.bin`` verification sets (lfw, cfp_fp, agedb_30, calfw, cplfw).

A .bin file is a Python pickle of ``(bins, issame_list)``: ``bins`` holds 2 x N
encoded 112 x 112 aligned face images (pair i = images 2i and 2i+1) and
``issame_list`` N booleans. Unpickling can run code, so we only ever open a path
the user named explicitly.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from facefoundry.faces.io import decode_image


def read_bin(path: str | Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Decoded RGB faces (2N) and the N same/different labels of a trusted .bin file."""
    path = Path(path)
    with open(path, "rb") as handle:
        bins, issame = pickle.load(handle, encoding="bytes")  # noqa: S301 - explicit path only
    issame = np.asarray(issame, dtype=bool)
    if len(bins) != 2 * len(issame):
        raise ValueError(
            f"{path}: {len(bins)} images for {len(issame)} pairs (expected 2 per pair)"
        )
    images = [
        decode_image(
            bytes(np.asarray(b).tobytes()) if not isinstance(b, bytes) else b, f"{path}[{i}]"
        )
        for i, b in enumerate(bins)
    ]
    return images, issame


def write_bin(path: str | Path, encoded_images: list[bytes], issame: list[bool]) -> Path:
    """Write a .bin in insightface's layout (used by tests and for exporting our pairs)."""
    if len(encoded_images) != 2 * len(issame):
        raise ValueError("a .bin needs exactly two images per pair")
    path = Path(path)
    with open(path, "wb") as handle:
        pickle.dump((list(encoded_images), [bool(x) for x in issame]), handle, protocol=4)
    return path


def bin_folds(n_pairs: int, n_folds: int = 10) -> np.ndarray:
    """insightface's split: 10 contiguous folds over pair order, no shuffling."""
    return (np.arange(n_pairs) * n_folds) // max(n_pairs, 1)
