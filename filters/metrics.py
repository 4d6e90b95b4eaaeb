"""Dataset-quality metrics from genuine and impostor cosine similarities.

Scores are cosine similarities (higher = more alike). A pair is a match when its
score is strictly above the threshold. Definitions (docs/filters.md):

- FMR(t) = share of impostor scores > t; FNMR(t) = share of genuine scores <= t.
- EER: where FMR and FNMR cross, interpolated linearly between adjacent scores.
- FNMR at FMR x: at the lowest threshold t among impostor scores with FMR(t) <= x.
  Both are read off scikit-learn's ROC curve in ``facefoundry.roc`` (shared with
  ``evaluation/``).
- FDR = (mu_g - mu_i)^2 / (sigma_g^2 + sigma_i^2)  (Fisher discriminant ratio).
- d' = |mu_g - mu_i| / sqrt((sigma_g^2 + sigma_i^2) / 2)  (decidability).
- DCFace uniqueness: share of identity centres with no other centre within cosine
  distance r (distance = 1 - cos), i.e. nearest other centre cos < 1 - r.
- DCFace consistency: mean over identities of the share of samples within r of
  their own centre (cos to centre >= 1 - r).
"""

from __future__ import annotations

import logging

import numpy as np

from facefoundry import roc
from facefoundry.filters.groups import centroid_cosines, centroids, group_counts, valid_rows
from facefoundry.filters.neighbours import nearest_other
from facefoundry.filters.pairs import genuine_pairs, impostor_pairs, pair_scores

logger = logging.getLogger(__name__)

FMR_POINTS = (1e-2, 1e-3)
HISTOGRAM_EDGES = np.linspace(-1.0, 1.0, 101)  # 100 bins of 0.02 cosine


def _moments(scores: np.ndarray) -> tuple[float, float]:
    scores = np.asarray(scores, dtype=np.float64)
    return float(scores.mean()), float(scores.std())


def fisher_discriminant_ratio(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """FDR = (mu_g - mu_i)^2 / (sigma_g^2 + sigma_i^2); population standard deviations."""
    mu_g, sd_g = _moments(genuine)
    mu_i, sd_i = _moments(impostor)
    spread = sd_g**2 + sd_i**2
    return float((mu_g - mu_i) ** 2 / spread) if spread > 0 else float("inf")


def decidability(genuine: np.ndarray, impostor: np.ndarray) -> float:
    """d' = |mu_g - mu_i| / sqrt((sigma_g^2 + sigma_i^2) / 2)."""
    mu_g, sd_g = _moments(genuine)
    mu_i, sd_i = _moments(impostor)
    spread = np.sqrt((sd_g**2 + sd_i**2) / 2)
    return float(abs(mu_g - mu_i) / spread) if spread > 0 else float("inf")


def _curve(genuine: np.ndarray, impostor: np.ndarray) -> roc.Roc | None:
    scores = np.concatenate([np.asarray(genuine, float), np.asarray(impostor, float)])
    return roc.roc(scores, np.arange(len(scores)) < len(genuine))


def equal_error_rate(genuine: np.ndarray, impostor: np.ndarray) -> tuple[float, float]:
    """(EER, cosine threshold) where FMR = FNMR, interpolated between adjacent distinct
    scores; a match is a score > the threshold. NaN without both samples."""
    return roc.equal_error_rate(_curve(genuine, impostor), strict=True)


def fnmr_at_fmr(genuine: np.ndarray, impostor: np.ndarray, fmr: float) -> dict:
    """FNMR at the lowest threshold (an impostor score) whose FMR is <= ``fmr``.

    Returns the threshold (cosine), the FMR actually reached and the FMR resolution
    1/len(impostor); with fewer than 1/fmr impostors the figure is the strictest
    measurable one (``resolved`` False).
    """
    return _fnmr_at_fmr(_curve(genuine, impostor), fmr)


def _fnmr_at_fmr(curve: roc.Roc | None, fmr: float) -> dict:
    if curve is None:
        return {"fnmr": None, "threshold": None, "fmr": None, "resolved": False}
    tmr, threshold, reached = roc.rate_at_fpr(curve, fmr)
    return {
        "fnmr": 1.0 - tmr,
        "threshold": threshold,
        "fmr": reached,
        "resolved": bool(curve.impostor * fmr >= 1),
    }


def histogram(scores: np.ndarray, edges: np.ndarray = HISTOGRAM_EDGES) -> dict:
    counts, _ = np.histogram(np.clip(scores, edges[0], edges[-1]), bins=edges)
    return {"edges": [round(float(e), 4) for e in edges], "counts": counts.tolist()}


def distribution(scores: np.ndarray) -> dict:
    """Count, moments, quantiles and a 0.02-wide histogram of cosine scores."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(scores):
        return {"n": 0}
    mean, std = _moments(scores)
    q = np.quantile(scores, [0.01, 0.05, 0.5, 0.95, 0.99])
    return {
        "n": int(len(scores)),
        "mean": mean,
        "std": std,
        "min": float(scores.min()),
        "max": float(scores.max()),
        "quantiles": {
            k: float(v) for k, v in zip(("1%", "5%", "50%", "95%", "99%"), q, strict=True)
        },
        "histogram": histogram(scores),
    }


def verification_figures(genuine: np.ndarray, impostor: np.ndarray) -> dict:
    """EER, FNMR at FMR 1e-2 and 1e-3, FDR and d' of two score samples."""
    if not len(genuine) or not len(impostor):
        return {"eer": None, "eer_threshold": None, "fnmr_at_fmr": {}, "fdr": None, "d_prime": None}
    curve = _curve(genuine, impostor)  # one ROC for the EER and every FNMR
    eer, eer_threshold = roc.equal_error_rate(curve, strict=True)
    return {
        "eer": eer,
        "eer_threshold": eer_threshold,
        "fnmr_at_fmr": {f"{fmr:.0e}": _fnmr_at_fmr(curve, fmr) for fmr in FMR_POINTS},
        "fdr": fisher_discriminant_ratio(genuine, impostor),
        "d_prime": decidability(genuine, impostor),
    }


def uniqueness(nearest_cos: np.ndarray, radius: float) -> float:
    """Share of centres whose nearest other centre is farther than cosine distance ``radius``."""
    nearest_cos = np.asarray(nearest_cos, dtype=np.float64)
    if not len(nearest_cos):
        return float("nan")
    return float(np.mean(nearest_cos < 1.0 - radius))


def consistency(centre_cos: np.ndarray, groups: np.ndarray, n_groups: int, radius: float) -> float:
    """Mean over identities (with samples) of the share of samples with cos to centre >= 1 - r."""
    present = group_counts(groups, n_groups)
    inside = np.bincount(groups, weights=(centre_cos >= 1.0 - radius), minlength=n_groups)
    has = present > 0
    return float(np.mean(inside[has] / present[has])) if has.any() else float("nan")


def images_per_identity(counts: np.ndarray) -> dict:
    """Histogram {images: identities} over identities with at least one image, and moments."""
    counts = np.asarray(counts)
    counts = counts[counts > 0]
    if not len(counts):
        return {"identities": 0, "histogram": {}}
    values, freq = np.unique(counts, return_counts=True)
    return {
        "identities": int(len(counts)),
        "mean": float(counts.mean()),
        "min": int(counts.min()),
        "max": int(counts.max()),
        "histogram": {str(int(v)): int(f) for v, f in zip(values, freq, strict=True)},
    }


def dataset_metrics(
    vectors: np.ndarray,
    groups: np.ndarray,
    *,
    radius: float,
    impostor_pairs_n: int = 200_000,
    genuine_pairs_max: int = 200_000,
    seed: int = 0,
    block: int = 2048,
    backend: str = "auto",
) -> dict:
    """All quality figures of one embedding set grouped by identity (rows with group -1 left out).

    ``radius`` is the DCFace cosine distance r for uniqueness and consistency.
    Invalid rows (NaN/zero) are left out and counted.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    groups = np.asarray(groups, dtype=np.int64).copy()
    unusable = (groups >= 0) & ~valid_rows(vectors)
    groups[unusable] = -1
    present = np.unique(groups[groups >= 0])
    codes = np.full(int(groups.max()) + 1 if len(present) else 0, -1, dtype=np.int64)
    codes[present] = np.arange(len(present))
    local = np.where(groups >= 0, codes[np.maximum(groups, 0)] if len(codes) else -1, -1)
    rows = np.flatnonzero(local >= 0)
    n_ids = len(present)
    out: dict = {
        "samples": int(len(rows)),
        "identities": int(n_ids),
        "unusable": int(unusable.sum()),
    }
    if n_ids == 0:
        return out
    ga, gb, exhaustive = genuine_pairs(local, genuine_pairs_max, seed)
    ia, ib = impostor_pairs(local, impostor_pairs_n, seed)
    genuine, impostor = pair_scores(vectors, ga, gb), pair_scores(vectors, ia, ib)
    out["genuine"] = distribution(genuine) | {"all_pairs": exhaustive}
    out["impostor"] = distribution(impostor) | {"seed": seed}
    out.update(verification_figures(genuine, impostor))
    centres, counts = centroids(vectors[rows], local[rows], n_ids)
    centre_cos = centroid_cosines(vectors[rows], local[rows], centres)
    _, nearest = nearest_other(centres, block=block, backend=backend)
    out["radius"] = {"distance": float(radius), "cos": float(1.0 - radius)}
    out["uniqueness"] = uniqueness(nearest, radius) if n_ids > 1 else None
    out["consistency"] = consistency(centre_cos, local[rows], n_ids, radius)
    out["centroid_cos"] = distribution(centre_cos)
    out["nearest_centre_cos"] = distribution(nearest[np.isfinite(nearest)])
    out["images_per_identity"] = images_per_identity(counts)
    return out
