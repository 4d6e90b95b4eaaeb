"""Exact blocked cosine search over unit vectors: nearest other row, nearest in a base set.

Never forms an N x N matrix: queries go in row blocks against column tiles, and
only per-row maxima survive a tile. Scores are cosine similarities (dot products
of unit rows), computed in float32. ``backend="faiss"`` uses an exact flat
inner-product index when faiss is installed; ``auto`` picks it when importable.

The optional bf16 screen multiplies in bfloat16 first (about 1.7x faster on CPUs
with native bf16) and re-computes in float32 every row whose screened score comes
within ``BF16_MARGIN`` of the threshold, so the set of pairs above a threshold and
their scores are exactly those of float32 (the bf16 error on unit vectors is
below 2 * 2**-8 + 2**-8 < 0.012, see docs/filters.md).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)

BF16_MARGIN = 0.02
COLUMN_TILE = 16384


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def choose_backend(backend: str = "auto") -> str:
    """``torch`` or ``faiss``; asking for faiss without it installed fails with advice."""
    if backend == "auto":
        return "faiss" if faiss_available() else "torch"
    if backend == "faiss" and not faiss_available():
        raise ImportError(
            "search_backend 'faiss' needs the faiss package (pip install faiss-cpu); "
            "use 'auto' or 'torch' for the built-in exact blocked search"
        )
    if backend not in ("torch", "faiss"):
        raise ValueError(f"unknown search backend {backend!r}; use auto, torch or faiss")
    return backend


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when the CPU multiplies bfloat16 natively (avx512_bf16 or AMX); Linux only."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def choose_screen(screen: str = "auto") -> bool:
    if screen == "auto":
        return cpu_has_bf16()
    if screen not in ("none", "bf16"):
        raise ValueError(f"unknown screen {screen!r}; use auto, none or bf16")
    return screen == "bf16"


def _torch():
    import torch

    return torch


def _as_tensor(vectors: np.ndarray):
    torch = _torch()
    return torch.from_numpy(np.ascontiguousarray(vectors, dtype=np.float32))


def _check(vectors: np.ndarray, what: str) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2:
        raise ValueError(f"{what}: expected an N x dim array, got shape {vectors.shape}")
    if not np.isfinite(vectors).all():
        raise ValueError(f"{what}: contains NaN or infinite values; drop those rows first")
    return vectors


class TorchMaxIndex:
    """A growing float32 matrix of base rows; ``search`` gives each query's best base row.

    With ``threshold`` set and the bf16 screen on, rows whose screened score reaches
    ``threshold - BF16_MARGIN`` get exact float32 scores; the others report the
    screened estimate, which is below the threshold either way.
    """

    def __init__(self, dim: int, capacity: int, screen: bool = False):
        torch = _torch()
        self._base = torch.empty((max(capacity, 1), dim), dtype=torch.float32)
        self._base16 = (
            torch.empty((max(capacity, 1), dim), dtype=torch.bfloat16) if screen else None
        )
        self._ids = np.empty(max(capacity, 1), dtype=np.int64)
        self.size = 0

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        n = len(vectors)
        if not n:
            return
        block = _as_tensor(vectors)
        self._base[self.size : self.size + n] = block
        if self._base16 is not None:
            self._base16[self.size : self.size + n] = block.bfloat16()
        self._ids[self.size : self.size + n] = ids
        self.size += n

    def search(
        self, queries: np.ndarray, threshold: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(best cosine, best base id) per query; id -1 and -inf when the base is empty."""
        torch = _torch()
        q = _as_tensor(queries)
        best = torch.full((len(q),), -float("inf"), dtype=torch.float32)
        arg = torch.full((len(q),), -1, dtype=torch.int64)
        screen = self._base16 is not None and threshold is not None
        q16 = q.bfloat16() if screen else None
        # one reusable output buffer per search: no allocation per tile
        width = min(COLUMN_TILE, max(self.size, 1))
        buffer = torch.empty(len(q) * width, dtype=torch.bfloat16 if screen else torch.float32)
        with torch.inference_mode():
            for start in range(0, self.size, COLUMN_TILE):
                stop = min(start + COLUMN_TILE, self.size)
                tile = buffer[: len(q) * (stop - start)].view(len(q), stop - start)
                if screen:
                    torch.mm(q16, self._base16[start:stop].T, out=tile)
                    top16, where16 = tile.max(dim=1)
                    top16 = top16.float()
                    near = top16 >= threshold - BF16_MARGIN
                    rows = torch.nonzero(near).flatten()
                    if len(rows):  # exact float32 re-check of the few rows near the threshold
                        top, where = (q[rows] @ self._base[start:stop].T).max(dim=1)
                        better = top > best[rows]
                        best[rows[better]] = top[better]
                        arg[rows[better]] = where[better] + start
                    better = ~near & (top16 > best)  # screened estimates, all below threshold
                    best[better] = top16[better]
                    arg[better] = where16[better] + start
                    continue
                torch.mm(q, self._base[start:stop].T, out=tile)
                top, where = tile.max(dim=1)
                better = top > best
                best[better] = top[better]
                arg[better] = where[better] + start
        arg_np = arg.numpy()
        ids = np.where(arg_np >= 0, self._ids[np.maximum(arg_np, 0)], -1)
        return best.numpy(), ids


class FaissMaxIndex:
    """The same interface on an exact faiss ``IndexFlatIP`` (inner product = cosine)."""

    def __init__(self, dim: int, capacity: int = 0, screen: bool = False):
        import faiss

        self._index = faiss.IndexFlatIP(dim)
        self._all = np.empty(0, dtype=np.int64)
        self.size = 0

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        if not len(vectors):
            return
        self._index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        self._all = np.concatenate([self._all, np.asarray(ids, dtype=np.int64)])
        self.size += len(vectors)

    def search(
        self, queries: np.ndarray, threshold: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        if self.size == 0:
            return np.full(len(queries), -np.inf, np.float32), np.full(len(queries), -1, np.int64)
        scores, where = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
        return scores[:, 0].astype(np.float32), self._all[where[:, 0]]


def make_index(dim: int, capacity: int, backend: str = "auto", screen: bool = False):
    """An empty max-cosine index of the chosen backend."""
    if choose_backend(backend) == "faiss":
        return FaissMaxIndex(dim, capacity)
    return TorchMaxIndex(dim, capacity, screen)


def nearest_in(
    queries: np.ndarray,
    base: np.ndarray,
    *,
    block: int = 2048,
    backend: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query row, the most similar base row: (index into base, cosine). Exact float32."""
    queries, base = _check(queries, "queries"), _check(base, "base")
    if queries.shape[1] != base.shape[1]:
        raise ValueError(f"dimension mismatch: queries {queries.shape[1]}, base {base.shape[1]}")
    index = make_index(base.shape[1], len(base), backend)
    index.add(base, np.arange(len(base)))
    best = np.full(len(queries), -np.inf, dtype=np.float32)
    ids = np.full(len(queries), -1, dtype=np.int64)
    for start in range(0, len(queries), block):
        stop = min(start + block, len(queries))
        best[start:stop], ids[start:stop] = index.search(queries[start:stop])
        if progress:
            progress(stop - start)
    return ids, best


def nearest_other(
    vectors: np.ndarray,
    *,
    block: int = 2048,
    backend: str = "auto",
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """For each row, the most similar OTHER row: (index, cosine); -1 and -inf if N < 2.

    The torch path visits only the upper-triangle tiles (each pair once) and
    updates both the row and the column maxima: half the multiply-adds of a
    full sweep, memory bounded by one block x block tile.
    """
    vectors = _check(vectors, "vectors")
    n = len(vectors)
    best = np.full(n, -np.inf, dtype=np.float32)
    ids = np.full(n, -1, dtype=np.int64)
    if n < 2:
        return ids, best
    if choose_backend(backend) == "faiss":
        import faiss

        index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        for start in range(0, n, block):
            stop = min(start + block, n)
            scores, where = index.search(vectors[start:stop], 2)
            own = where == np.arange(start, stop)[:, None]
            pick = np.where(own[:, 0], 1, 0)  # exact duplicates may list another row first
            rows = np.arange(stop - start)
            best[start:stop], ids[start:stop] = scores[rows, pick], where[rows, pick]
            if progress:
                progress(stop - start)
        return ids, best
    torch = _torch()
    x = _as_tensor(vectors)
    best_t = torch.from_numpy(best)
    ids_t = torch.from_numpy(ids)
    with torch.inference_mode():
        for i0 in range(0, n, block):
            i1 = min(i0 + block, n)
            for j0 in range(i0, n, block):
                j1 = min(j0 + block, n)
                scores = x[i0:i1] @ x[j0:j1].T
                if i0 == j0:
                    scores.fill_diagonal_(-float("inf"))
                top, where = scores.max(dim=1)
                better = top > best_t[i0:i1]
                best_t[i0:i1][better] = top[better]
                ids_t[i0:i1][better] = where[better] + j0
                if j0 != i0:
                    top, where = scores.max(dim=0)
                    better = top > best_t[j0:j1]
                    best_t[j0:j1][better] = top[better]
                    ids_t[j0:j1][better] = where[better] + i0
            if progress:
                progress(i1 - i0)
    return ids, best
