"""Sample rules: face outcome, detection quality, and intra-class consistency.

Each function returns a boolean "rejected" mask or a reason array and never
looks at samples already rejected (``alive`` masks). Cosines are similarities
to the identity centroid (1 = identical direction), not distances.
"""

from __future__ import annotations

import logging

import numpy as np

from facefoundry.filters.funnel import (
    BAD_EMBEDDING,
    BAD_IMAGE,
    LOW_DET_SCORE,
    MULTIPLE_FACES,
    NO_FACE,
)
from facefoundry.filters.groups import group_counts, valid_rows

logger = logging.getLogger(__name__)

STATUS_REASONS = {
    "bad_image": BAD_IMAGE,
    "no_face": NO_FACE,
    "centre_fallback": NO_FACE,  # a guessed crop, not a detected face
    "bad_embedding": BAD_EMBEDDING,
}


def face_reasons(
    status: np.ndarray,
    vectors: np.ndarray,
    n_faces: np.ndarray,
    det_score: np.ndarray,
    *,
    max_faces: int | None = 1,
    min_det_score: float = 0.0,
) -> np.ndarray:
    """Reason per sample from the face outcome (None = passes), first failing rule wins.

    Order: face status (bad image, no face, bad embedding), an unusable vector
    (NaN, infinite or zero: ``bad_embedding``), more than ``max_faces`` detected
    faces, detection score below ``min_det_score`` (a missing score fails when
    the minimum is above 0).
    """
    n = len(status)
    reasons = np.full(n, None, dtype=object)
    status = np.asarray(status, dtype=object)
    not_ok = status != "ok"
    for index in np.flatnonzero(not_ok):
        reasons[index] = STATUS_REASONS.get(status[index], str(status[index]))
    open_ = ~not_ok
    bad_vector = open_ & ~valid_rows(vectors)
    reasons[bad_vector] = BAD_EMBEDDING
    open_ &= ~bad_vector
    if max_faces is not None:
        crowded = open_ & (np.asarray(n_faces) > max_faces)
        reasons[crowded] = MULTIPLE_FACES
        open_ &= ~crowded
    if min_det_score > 0:
        with np.errstate(invalid="ignore"):
            weak = open_ & ~(np.asarray(det_score, dtype=np.float64) >= min_det_score)
        reasons[weak] = LOW_DET_SCORE
    return reasons


def below_absolute(centre_cos: np.ndarray, alive: np.ndarray, min_cos: float) -> np.ndarray:
    """Alive samples whose cosine to their centroid is below ``min_cos``."""
    with np.errstate(invalid="ignore"):
        return alive & ~(centre_cos >= min_cos)


def quantile_trim(
    centre_cos: np.ndarray, groups: np.ndarray, n_groups: int, alive: np.ndarray, quantile: float
) -> np.ndarray:
    """The floor(quantile * n) lowest-cosine alive samples of each identity of n alive samples.

    A rank rule rather than an interpolated quantile: an identity of 10 loses 1 at
    q = 0.1, of 50 loses 5, of 9 or fewer loses none; ties go by row order.
    """
    trimmed = np.zeros(len(centre_cos), dtype=bool)
    if quantile <= 0:
        return trimmed
    rows = np.flatnonzero(alive)
    counts = group_counts(groups, n_groups, alive)
    drop = np.floor(quantile * counts + 1e-9).astype(np.int64)
    if not drop.any():
        return trimmed
    # sort alive rows by (identity, cosine, row): rank within identity = position - start
    order = rows[np.lexsort((rows, centre_cos[rows], groups[rows]))]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(order)) - starts[groups[order]]
    trimmed[order[rank < drop[groups[order]]]] = True
    return trimmed


def pair_consistency(
    vectors: np.ndarray, groups: np.ndarray, n_groups: int, alive: np.ndarray
) -> np.ndarray:
    """Mean pairwise cosine among each identity's alive samples (NaN below 2 samples).

    From the sum S of n unit vectors: sum over ordered pairs i != j of x_i.x_j is
    |S|^2 - n, so the mean is (|S|^2 - n) / (n (n - 1)). Unlike the cosine to the
    centroid it does not favour identities with few samples.
    """
    import scipy.sparse as sp

    rows = np.flatnonzero(alive)
    indicator = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (groups[rows], rows)), shape=(n_groups, len(vectors))
    )
    sums = np.asarray(indicator @ np.asarray(vectors, dtype=np.float32), dtype=np.float64)
    n = group_counts(groups, n_groups, alive).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n >= 2, ((sums**2).sum(axis=1) - n) / (n * (n - 1)), np.nan)
