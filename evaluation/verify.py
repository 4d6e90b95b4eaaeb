"""Face verification on LFW pairs and .bin sets: images -> embeddings -> protocol figures."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from facefoundry.evaluation.binset import bin_folds, read_bin
from facefoundry.evaluation.lfw import Lfw
from facefoundry.evaluation.protocol import Pair, read_pairs, verification_metrics
from facefoundry.faces import get_embedder, process_images_parallel

logger = logging.getLogger(__name__)

PAIR_SETS = {"view2": "pairs.txt", "devtest": "pairsDevTest.txt", "devtrain": "pairsDevTrain.txt"}


def load_pairs(lfw: Lfw, pairs: str = "view2", folds: list[int] | None = None) -> list[Pair]:
    """Pairs of a named set, optionally only some folds (e.g. ``[0]`` for fold 1)."""
    if pairs not in PAIR_SETS:
        raise ValueError(f"unknown pair set {pairs!r}; use one of {sorted(PAIR_SETS)}")
    selected = read_pairs(lfw.protocol_file(PAIR_SETS[pairs]))
    if folds is not None:
        selected = [p for p in selected if p.fold in set(folds)]
    return selected


def embed_lfw_images(
    lfw: Lfw,
    names: list[str],
    embedder: str = "sface",
    detector: str = "yunet",
    workers: int = 2,
    flip_tta: bool = True,
    progress: bool = True,
    worker_threads: int = 1,
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Embeddings and outcome status per image name; undetected faces use a centred crop."""
    items = list(lfw.read_many(names))
    result = process_images_parallel(
        items,
        detector,
        embedder,
        workers=workers,
        progress=progress,
        description=f"LFW {embedder}",
        no_face="centre",
        flip_tta=flip_tta,
        policy="central",
        worker_threads=worker_threads,
    )
    vectors = {o.key: result.embeddings[i] for i, o in enumerate(result.outcomes)}
    status = {o.key: o.status for o in result.outcomes}
    return vectors, status


def score_pairs(vectors: dict[str, np.ndarray], pairs: list[Pair]) -> np.ndarray:
    """Cosine similarity per pair; a pair with an unusable image scores -1 (a reject)."""
    scores = np.empty(len(pairs), dtype=np.float64)
    for index, pair in enumerate(pairs):
        score = float(np.dot(vectors[pair.left], vectors[pair.right]))
        scores[index] = score if np.isfinite(score) else -1.0
    return scores


def evaluate_lfw(
    embedder: str = "sface",
    pairs: str = "view2",
    lfw_root: str | Path | None = None,
    detector: str = "yunet",
    workers: int = 2,
    flip_tta: bool = True,
    folds: list[int] | None = None,
    progress: bool = True,
) -> dict:
    """The LFW protocol for one embedder; returns the figures as a JSON-ready dict."""
    sets = evaluate_lfw_sets(
        embedder, [pairs], lfw_root, detector, workers, flip_tta, folds, progress
    )
    return sets[pairs]


def evaluate_lfw_sets(
    embedder: str = "sface",
    pair_sets: Sequence[str] = ("devtest", "view2"),
    lfw_root: str | Path | None = None,
    detector: str = "yunet",
    workers: int = 2,
    flip_tta: bool = True,
    folds: list[int] | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """The LFW protocol on several pair sets, each image embedded once for all of them.

    DevTest and View 2 share 1,130 of their 9,250 images; one pass over the 8,120
    distinct ones (one worker pool) is what a run's evaluate stage pays, not two.
    ``seconds`` is the shared pass's wall time, the same in every set's figures.
    """
    started = time.perf_counter()
    lfw = Lfw(lfw_root)
    selected = {name: load_pairs(lfw, name, folds) for name in pair_sets}
    names = sorted({n for chosen in selected.values() for p in chosen for n in (p.left, p.right)})
    vectors, status = embed_lfw_images(lfw, names, embedder, detector, workers, flip_tta, progress)
    model = get_embedder(embedder)
    seconds = round(time.perf_counter() - started, 2)
    results = {}
    for name, chosen in selected.items():
        used = {n for p in chosen for n in (p.left, p.right)}
        same = np.array([p.same for p in chosen])
        fold_ids = np.array([p.fold for p in chosen])
        figures = verification_metrics(score_pairs(vectors, chosen), same, fold_ids)
        figures.update(
            {
                "benchmark": f"lfw-{name}",
                "embedder": embedder,
                "embedder_checksum": model.checksum,
                "detector": detector,
                "flip_tta": flip_tta,
                "images": len(used),
                "undetected": sum(1 for n in used if status[n] == "centre_fallback"),
                "unusable": sum(1 for n in used if status[n] not in ("ok", "centre_fallback")),
                "seconds": seconds,
            }
        )
        results[name] = figures
    return results


def evaluate_bin(path: str | Path, embedder: str = "sface", flip_tta: bool = True) -> dict:
    """Protocol figures on an insightface .bin set (faces already aligned to 112 x 112)."""
    started = time.perf_counter()
    images, issame = read_bin(path)
    model = get_embedder(embedder)
    faces = np.stack([_as_112(image) for image in images])
    vectors = model.embed_aligned(faces, flip_tta=flip_tta)
    scores = np.sum(vectors[0::2] * vectors[1::2], axis=1)
    figures = verification_metrics(scores, issame, bin_folds(len(issame)))
    figures.update(
        {
            "benchmark": Path(path).stem,
            "embedder": embedder,
            "embedder_checksum": model.checksum,
            "undetected": 0,
            "seconds": round(time.perf_counter() - started, 2),
        }
    )
    return figures


def _as_112(image: np.ndarray) -> np.ndarray:
    if image.shape[:2] == (112, 112):
        return image
    import cv2

    return cv2.resize(image, (112, 112), interpolation=cv2.INTER_AREA)


def evaluate_stage(model: str, out_dir: Path, settings) -> dict:
    """The evaluate stage: every LFW pair set and .bin file of ``settings``
    (``EvalSettings``) for one recognizer, one JSON per benchmark in ``out_dir``."""
    import json

    results = {}
    sets = evaluate_lfw_sets(
        model,
        list(settings.pairs),
        settings.lfw,
        settings.detector,
        settings.workers,
        settings.flip_tta,
        folds=settings.folds,
        progress=False,
    )
    for pairs, figures in sets.items():
        (out_dir / f"lfw-{pairs}.json").write_text(json.dumps(figures, indent=1))
        results[f"lfw-{pairs}"] = round(figures["accuracy"], 4)
    for path in settings.bins:
        figures = evaluate_bin(path, model, settings.flip_tta)
        (out_dir / f"{Path(path).stem}.json").write_text(json.dumps(figures, indent=1))
        results[Path(path).stem] = round(figures["accuracy"], 4)
    return {"accuracy": results}
