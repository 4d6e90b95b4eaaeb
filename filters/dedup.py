"""Inter-class de-duplication: greedy, exact, blocked, never an N x N matrix.

Identities are visited from the most to the least preferred (by default the most
consistent first). An identity is merged away when its centroid's cosine
similarity to an already kept identity exceeds ``tau`` (strictly); its collision
partner is the most similar kept identity. This is the same greedy rule as
Vec2Face's "reject new identity vectors with cos > 0.4 to existing ones", run in
blocks: each block of B identities is compared with the kept identities of
earlier blocks (column tiles, one B x tile matrix at a time), then resolved
inside itself in order. Work is at most N^2/2 dot products; memory O(N d + B^2).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from facefoundry.filters.neighbours import _check, choose_screen, make_index

logger = logging.getLogger(__name__)


@dataclass
class DedupResult:
    """Per input row: ``kept``; for merged rows the kept ``partner`` (row index) and its cosine."""

    kept: np.ndarray
    partner: np.ndarray
    partner_cos: np.ndarray

    @property
    def n_merged(self) -> int:
        return int((~self.kept).sum())


def priority_order(priority: np.ndarray | None, n: int) -> np.ndarray:
    """Rows from most to least preferred: higher priority first, ties by lower row index."""
    if priority is None:
        return np.arange(n)
    priority = np.asarray(priority, dtype=np.float64)
    if len(priority) != n:
        raise ValueError(f"priority has {len(priority)} entries for {n} rows")
    return np.argsort(-np.nan_to_num(priority, nan=-np.inf), kind="stable")


def greedy_dedup(
    centroids: np.ndarray,
    tau: float,
    priority: np.ndarray | None = None,
    *,
    block: int = 2048,
    backend: str = "auto",
    screen: str = "none",
    progress: bool = False,
) -> DedupResult:
    """Keep a set of identities whose centroids pairwise have cosine <= ``tau``.

    ``centroids``: N x d unit vectors (cosine = dot product). ``priority``: higher
    is kept first (e.g. the mean cosine of an identity's samples to its centroid).
    ``screen="bf16"`` multiplies in bf16 and re-checks near-threshold rows in float32
    (same result); ``auto`` uses it where the CPU has native bf16.
    """
    from tqdm.auto import tqdm

    centroids = _check(centroids, "centroids")
    n, dim = centroids.shape
    order = priority_order(priority, n)
    kept = np.zeros(n, dtype=bool)
    partner = np.full(n, -1, dtype=np.int64)
    partner_cos = np.full(n, np.nan, dtype=np.float32)
    index = make_index(dim, n, backend, screen=choose_screen(screen))
    bar = tqdm(total=n, desc="de-duplicate", unit="id", disable=not progress)
    not_earlier = ~np.tri(min(block, n), k=-1, dtype=bool)  # diagonal and above: not earlier
    for start in range(0, n, block):
        rows = order[start : start + block]
        queries = centroids[rows]
        prior_cos, prior_id = index.search(queries, threshold=tau)
        dropped = prior_cos > tau
        inner = queries @ queries.T  # B x B, in priority order
        np.putmask(inner, not_earlier[: len(rows), : len(rows)], -np.inf)  # earlier rows only
        keep_block = ~dropped
        for i in np.flatnonzero(~dropped & (inner > tau).any(axis=1)):
            # earlier rows' decisions are final: ascending order is the greedy order
            if np.any((inner[i, :i] > tau) & keep_block[:i]):
                keep_block[i] = False
        merged = np.flatnonzero(~keep_block)
        if len(merged):  # partner: the most similar kept identity, earlier blocks or this one
            masked = np.where(keep_block[None, :], inner[merged], -np.inf)
            inner_best, inner_arg = masked.max(axis=1), masked.argmax(axis=1)
            use_inner = inner_best > prior_cos[merged]
            partner[rows[merged]] = np.where(use_inner, rows[inner_arg], prior_id[merged])
            partner_cos[rows[merged]] = np.where(use_inner, inner_best, prior_cos[merged])
        kept[rows[keep_block]] = True
        index.add(queries[keep_block], rows[keep_block])
        bar.update(len(rows))
    bar.close()
    logger.info("de-duplication at cos > %.4f: kept %d of %d identities", tau, kept.sum(), n)
    return DedupResult(kept, partner, partner_cos)


def conflict_pairs(
    centroids: np.ndarray, tau: float, *, block: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair ``i < j`` whose centroids' cosine exceeds ``tau``: (i, j, cosine).

    Exact float32 products in ``block x block`` tiles (N^2/2 dot products, memory
    O(B^2) plus the pairs): the conflict graph is sparse wherever de-duplication is
    meaningful, so the pairs are kept, not the matrix."""
    centroids = _check(centroids, "centroids")
    n = len(centroids)
    first, second, cosines = [], [], []
    for row in range(0, n, block):
        queries = centroids[row : row + block]
        for col in range(row, n, block):
            tile = queries @ centroids[col : col + block].T
            i, j = np.nonzero(tile > tau)
            i, j = i + row, j + col
            upper = j > i
            first.append(i[upper])
            second.append(j[upper])
            cosines.append(tile[i[upper] - row, j[upper] - col])
    if not first:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0, dtype=np.float32)
    return (
        np.concatenate(first).astype(np.int64),
        np.concatenate(second).astype(np.int64),
        np.concatenate(cosines).astype(np.float32),
    )


def largest_dedup(
    centroids: np.ndarray,
    tau: float,
    priority: np.ndarray | None = None,
    *,
    block: int = 2048,
) -> DedupResult:
    """Keep as many identities as the rule allows: centroids pairwise at cosine <= ``tau``.

    The same rule as ``greedy_dedup``, another choice of survivors. A greedy pass in
    priority order drops every identity that collides with an earlier one, so one
    identity near many others can cost all of them; here the identity with the fewest
    remaining collisions is kept first (ties: higher ``priority``), its colliding
    neighbours are dropped and the counts updated (the minimum-degree heuristic for a
    maximum independent set of the conflict graph). Every dropped identity has a kept
    partner above ``tau``, as in the greedy pass."""
    import heapq

    centroids = _check(centroids, "centroids")
    n = len(centroids)
    first, second, cosines = conflict_pairs(centroids, tau, block=block)
    ends = np.concatenate([first, second])
    others = np.concatenate([second, first])
    pair_cos = np.concatenate([cosines, cosines])
    order = np.argsort(ends, kind="stable")
    ends, others, pair_cos = ends[order], others[order], pair_cos[order]
    starts = np.searchsorted(ends, np.arange(n + 1))
    neighbours = [others[starts[v] : starts[v + 1]] for v in range(n)]
    degree = np.diff(starts).astype(np.int64)
    rank = np.empty(n, dtype=np.int64)
    rank[priority_order(priority, n)] = np.arange(n)
    heap = [(int(degree[v]), int(rank[v]), v) for v in range(n)]
    heapq.heapify(heap)
    alive = np.ones(n, dtype=bool)
    kept = np.zeros(n, dtype=bool)
    while heap:
        count, _, v = heapq.heappop(heap)
        if not alive[v] or count != degree[v]:
            continue  # dropped already, or a stale count
        kept[v], alive[v] = True, False
        for u in neighbours[v]:
            if alive[u]:
                alive[u] = False
                for w in neighbours[u]:
                    if alive[w]:
                        degree[w] -= 1
                        heapq.heappush(heap, (int(degree[w]), int(rank[w]), int(w)))
    partner = np.full(n, -1, dtype=np.int64)
    partner_cos = np.full(n, np.nan, dtype=np.float32)
    for v in np.flatnonzero(~kept):
        span = slice(starts[v], starts[v + 1])
        with_kept = kept[others[span]]
        best = np.argmax(np.where(with_kept, pair_cos[span], -np.inf))
        partner[v], partner_cos[v] = others[span][best], pair_cos[span][best]
    logger.info(
        "de-duplication at cos > %.4f (largest set): kept %d of %d identities", tau, kept.sum(), n
    )
    return DedupResult(kept, partner, partner_cos)
