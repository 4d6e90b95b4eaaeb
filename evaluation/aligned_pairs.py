"""LFW pairs as aligned 112 x 112 faces, detected once and cached, for fast validation.

Training validates every epoch; detecting and aligning the same 2,000 images each time
would cost more than the validation itself, so the aligned faces are stored once
under the cache folder (undetected faces use the centred crop, as the protocol does).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facefoundry.atomic import atomic_open
from facefoundry.evaluation.lfw import Lfw, cache_dir
from facefoundry.evaluation.protocol import verification_metrics
from facefoundry.evaluation.verify import load_pairs

logger = logging.getLogger(__name__)


@dataclass
class AlignedPairs:
    faces: np.ndarray  # M x 112 x 112 x 3 uint8, unique images
    left: np.ndarray  # index into faces, per pair
    right: np.ndarray
    same: np.ndarray
    folds: np.ndarray
    name: str

    def evaluate(self, embed) -> dict:
        """Protocol figures for ``embed(faces) -> unit vectors`` (flip TTA is up to embed)."""
        vectors = embed(self.faces)
        scores = np.sum(vectors[self.left] * vectors[self.right], axis=1)
        return verification_metrics(scores, self.same, self.folds)


def align_lfw_images(
    lfw: Lfw,
    names: list[str],
    no_face: str,
    description: str,
    workers: int = 2,
    progress: bool = True,
):
    """YuNet + ArcFace alignment of LFW images (112 px), one outcome per name."""
    from facefoundry.faces import process_images_parallel

    return process_images_parallel(
        list(lfw.read_many(names)),
        "yunet",
        "sface",
        workers=workers,
        progress=progress,
        description=description,
        no_face=no_face,
        keep_aligned=112,
    )


def aligned_pairs(
    pairs: str = "devtest",
    lfw_root: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
) -> AlignedPairs:
    """Aligned faces for one LFW pair set (cached as .npz under the cache folder)."""
    lfw = Lfw(lfw_root)
    selected = load_pairs(lfw, pairs)
    names = sorted({p.left for p in selected} | {p.right for p in selected})
    cache = cache_dir() / "lfw" / f"aligned-{pairs}-112.npz"
    if cache.is_file():
        with np.load(cache) as data:
            faces, cached_names = data["faces"], [str(n) for n in data["names"]]
        if cached_names != names:
            faces = None
    else:
        faces = None
    if faces is None:
        faces = align_lfw_images(
            lfw, names, "centre", f"align LFW {pairs}", workers, progress
        ).aligned
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_open(cache) as handle:
            np.savez(handle, faces=faces, names=np.array(names))
    position = {n: i for i, n in enumerate(names)}
    return AlignedPairs(
        faces=faces,
        left=np.array([position[p.left] for p in selected]),
        right=np.array([position[p.right] for p in selected]),
        same=np.array([p.same for p in selected]),
        folds=np.array([p.fold for p in selected]),
        name=pairs,
    )


def lfw_validator(pairs: AlignedPairs):
    """A training callback: LFW accuracy of the current backbone (flip TTA)."""

    def validate(trainer) -> dict:
        figures = pairs.evaluate(lambda faces: trainer.embed(faces, flip_tta=True))
        return {
            "val_set": f"lfw-{pairs.name}",
            "val_accuracy": figures["accuracy"],
            "val_accuracy_std": figures["accuracy_std"],
            "val_auc": figures["auc"],
            "val_eer": figures["eer"],
        }

    return validate


def bin_validator(path: str | Path):
    """A training callback scoring an insightface .bin set (pre-aligned pairs)."""
    import cv2

    from facefoundry.evaluation.binset import bin_folds, read_bin

    images, issame = read_bin(path)
    faces = np.stack(
        [im if im.shape[:2] == (112, 112) else cv2.resize(im, (112, 112)) for im in images]
    )
    pairs = AlignedPairs(
        faces,
        np.arange(0, len(faces), 2),
        np.arange(1, len(faces), 2),
        issame,
        bin_folds(len(issame)),
        Path(path).stem,
    )
    name = Path(path).stem

    def validate(trainer) -> dict:
        figures = pairs.evaluate(lambda batch: trainer.embed(batch, flip_tta=True))
        return {
            f"val_{name}_accuracy": figures["accuracy"],
            f"val_{name}_accuracy_std": figures["accuracy_std"],
        }

    return validate
