"""Per-identity arithmetic on row-grouped embeddings: validity, centroids, cosines to them.

Embeddings are float32 unit rows (cosine = dot product). A group is an identity,
coded 0..G-1 per row; rows may be masked out (rejected) without copying.
"""

from __future__ import annotations

import logging

import numpy as np
import scipy.sparse as sp

logger = logging.getLogger(__name__)

CHUNK_ROWS = 1 << 17


def valid_rows(vectors: np.ndarray) -> np.ndarray:
    """True where a row is usable: finite and not all zero (NaN/inf/zero rows cannot be compared)."""
    vectors = np.asarray(vectors)
    if vectors.ndim != 2:
        raise ValueError(f"expected an N x dim array, got shape {vectors.shape}")
    finite = np.isfinite(vectors).all(axis=1)
    nonzero = np.abs(np.where(np.isfinite(vectors), vectors, 0.0)).sum(axis=1) > 0
    return finite & nonzero


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32); zero rows stay zero."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def group_counts(groups: np.ndarray, n_groups: int, mask: np.ndarray | None = None) -> np.ndarray:
    """Number of (masked-in) rows per group."""
    selected = groups if mask is None else groups[mask]
    return np.bincount(selected, minlength=n_groups).astype(np.int64)


def centroids(
    vectors: np.ndarray, groups: np.ndarray, n_groups: int, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Unit mean vector per group over masked-in rows, and the row counts.

    Groups without rows get a zero centroid (count 0): callers must treat them as empty.
    The mean of unit vectors is re-normalised, so centroid cosines are comparable with
    sample cosines.
    """
    n = len(vectors)
    mask = np.ones(n, dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    rows = np.flatnonzero(mask)
    indicator = sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (groups[rows], rows)), shape=(n_groups, n)
    )
    # only masked-in rows are read, so NaN rows elsewhere do no harm
    sums = np.asarray(indicator @ np.asarray(vectors, dtype=np.float32), dtype=np.float32)
    return unit_rows(sums), group_counts(groups, n_groups, mask)


def centroid_cosines(vectors: np.ndarray, groups: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Cosine of each row to its own group's centroid (NaN for invalid rows or empty groups)."""
    out = np.empty(len(vectors), dtype=np.float32)
    for start in range(0, len(vectors), CHUNK_ROWS):  # bounded temporaries
        stop = start + CHUNK_ROWS
        out[start:stop] = np.einsum("ij,ij->i", vectors[start:stop], centres[groups[start:stop]])
    empty = ~np.any(centres != 0, axis=1)
    out[empty[groups]] = np.nan
    return out


def group_mean(
    values: np.ndarray, groups: np.ndarray, n_groups: int, mask: np.ndarray
) -> np.ndarray:
    """Mean of masked-in values per group (NaN for groups without rows)."""
    counts = group_counts(groups, n_groups, mask)
    sums = np.bincount(groups[mask], weights=values[mask].astype(np.float64), minlength=n_groups)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
