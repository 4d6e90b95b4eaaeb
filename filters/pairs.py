"""Genuine and impostor pairs for score distributions, sampled with a seed, never all O(N^2).

Rows are grouped by identity code (``groups``, -1 = leave out). Genuine pairs are
two different rows of one identity: all of them when there are at most
``max_pairs``, else a seeded sample uniform over all such pairs. Impostor pairs
are two rows of different identities, uniform over such pairs, with replacement.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

_SCORE_CHUNK = 1 << 18


def _members(groups: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Row indices sorted by group, the group ids present, their start offsets and sizes."""
    rows = np.flatnonzero(groups >= 0)
    order = rows[np.argsort(groups[rows], kind="stable")]
    ids, starts, sizes = np.unique(groups[order], return_index=True, return_counts=True)
    return order, ids, starts, sizes


def count_genuine_pairs(groups: np.ndarray) -> int:
    _, _, _, sizes = _members(np.asarray(groups))
    return int((sizes * (sizes - 1) // 2).sum())


def genuine_pairs(
    groups: np.ndarray, max_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(rows a, rows b, exhaustive): same-identity pairs, all or a seeded sample of ``max_pairs``."""
    groups = np.asarray(groups)
    order, _, starts, sizes = _members(groups)
    pair_counts = sizes * (sizes - 1) // 2
    total = int(pair_counts.sum())
    if total == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, True
    if total <= max_pairs:
        a_parts, b_parts = [], []
        for size in np.unique(sizes[sizes >= 2]):  # vectorised per distinct identity size
            first, second = np.triu_indices(int(size), 1)
            base = starts[sizes == size]
            a_parts.append(order[(base[:, None] + first[None, :]).reshape(-1)])
            b_parts.append(order[(base[:, None] + second[None, :]).reshape(-1)])
        return np.concatenate(a_parts), np.concatenate(b_parts), True
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(sizes), size=max_pairs, p=pair_counts / total)  # uniform over pairs
    size = sizes[chosen]
    first = rng.integers(0, size)
    second = (first + rng.integers(1, size)) % size  # a different member of the same identity
    return order[starts[chosen] + first], order[starts[chosen] + second], False


def impostor_pairs(
    groups: np.ndarray, n_pairs: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(rows a, rows b) of ``n_pairs`` seeded pairs from different identities (with replacement)."""
    groups = np.asarray(groups)
    rows = np.flatnonzero(groups >= 0)
    if len(np.unique(groups[rows])) < 2:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    rng = np.random.default_rng(seed + 1_000_003)
    a = rng.choice(rows, size=n_pairs)
    b = rng.choice(rows, size=n_pairs)
    same = groups[a] == groups[b]
    while same.any():  # redraw same-identity pairs until none are left
        b[same] = rng.choice(rows, size=int(same.sum()))
        same = groups[a] == groups[b]
    return a, b


def pair_scores(vectors: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each pair of unit rows, float64, in bounded chunks."""
    out = np.empty(len(a), dtype=np.float64)
    for start in range(0, len(a), _SCORE_CHUNK):
        stop = start + _SCORE_CHUNK
        out[start:stop] = np.einsum("ij,ij->i", vectors[a[start:stop]], vectors[b[start:stop]])
    return out
