"""Synthetic identities: who exists in a dataset, before any image is drawn.

An identity is a unit vector in the conditioning embedder's space plus the seed and
method that made it. Methods: ``uniform`` (normalised Gaussian = uniform on the
sphere, IDiff-Face's "synthetic uniform"), ``separated`` (uniform with rejection of
candidates whose cosine to an accepted identity exceeds ``tau``, checked in blocks so
memory stays O(block x n)), and ``two_stage`` (embeddings of unconditional samples,
which stay on the manifold of real faces), and ``fitted`` (a Gaussian fitted to the
conditioning embedder's embeddings of the generator's training faces, normalised, with
the same separation bound: in distribution for the model, so identity is followed far
better than for uniform vectors; measured in BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facefoundry.atomic import atomic_path

logger = logging.getLogger(__name__)

METHODS = ("uniform", "separated", "two_stage", "fitted")
PRIOR_FILE = "identity_prior.safetensors"


@dataclass
class IdentityTable:
    """identity ids (0..n-1), unit embeddings (n x d float32), per-identity seeds, method."""

    ids: np.ndarray
    embeddings: np.ndarray
    seeds: np.ndarray
    method: str
    embedder: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def save(self, path: str | Path) -> Path:
        """Write identities.parquet (id, method, seed, embedding) atomically."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        dim = self.embeddings.shape[1]
        flat = pa.array(self.embeddings.astype(np.float32).reshape(-1), type=pa.float32())
        table = pa.table(
            {
                "identity": pa.array(self.ids.astype(np.int64)),
                "method": pa.array([self.method] * len(self)),
                "seed": pa.array(self.seeds.astype(np.int64)),
                "embedding": pa.FixedSizeListArray.from_arrays(flat, dim),
            }
        ).replace_schema_metadata({"facefoundry.embedder": self.embedder})
        with atomic_path(path) as partial:
            pq.write_table(table, partial)
        return path

    @classmethod
    def load(cls, path: str | Path) -> IdentityTable:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if table.num_rows == 0:
            raise ValueError(f"{path}: the identity table is empty")
        embeddings = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
        meta = table.schema.metadata or {}
        return cls(
            ids=table.column("identity").to_numpy(),
            embeddings=embeddings.astype(np.float32),
            seeds=table.column("seed").to_numpy(),
            method=str(table.column("method")[0]),
            embedder=meta.get(b"facefoundry.embedder", b"").decode(),
        )


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def sample_uniform(n: int, dim: int, seed: int) -> np.ndarray:
    """n unit vectors uniform on the sphere S^(dim-1)."""
    if n <= 0:
        raise ValueError("the number of identities must be positive")
    return _unit(np.random.default_rng(seed).standard_normal((n, dim)))


def fit_identity_prior(embeddings: np.ndarray) -> dict[str, np.ndarray]:
    """Mean and Cholesky factor of the embeddings' covariance (a small ridge keeps it
    positive definite)."""
    embeddings = np.asarray(embeddings, np.float64)
    cov = np.cov(embeddings.T) + 1e-6 * np.eye(embeddings.shape[1])
    return {
        "mean": embeddings.mean(0).astype(np.float32),
        "factor": np.linalg.cholesky(cov).astype(np.float32),
    }


def save_identity_prior(embeddings: np.ndarray, path: str | Path) -> Path:
    from safetensors.numpy import save_file

    save_file(fit_identity_prior(embeddings), str(path))
    return Path(path)


def load_identity_prior(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"no identity prior at {path}: the 'fitted' method needs the generator's "
            f"{PRIOR_FILE} (written when it is trained)"
        )
    return load_file(str(path))


def sample_fitted(
    n: int,
    dim: int,
    seed: int,
    prior_path: str | Path,
    tau: float = 0.3,
    spread: float = 1.0,
):
    """n separated unit vectors drawn from the fitted Gaussian prior.

    ``spread`` scales the draws' deviations from the prior mean (1 = the training
    people's own spread). Every training embedding shares the mean direction, so a
    generator that follows only part of its condition keeps mostly that shared part;
    a spread above 1 gives each identity more of its own direction."""
    if spread <= 0:
        raise ValueError(f"spread must be positive, got {spread}")
    prior = load_identity_prior(prior_path)
    if prior["mean"].shape[0] != dim:
        raise ValueError(f"{prior_path} is {prior['mean'].shape[0]}-d, identities are {dim}-d")

    def draw(rng: np.random.Generator, count: int) -> np.ndarray:
        return draw_fitted(prior, rng, count, spread)

    return sample_separated(n, dim, seed, tau, draw=draw)


def draw_fitted(
    prior: dict[str, np.ndarray], rng: np.random.Generator, count: int, spread: float = 1.0
) -> np.ndarray:
    """``count`` raw (unnormalised) draws from a fitted prior: mean + spread x factor @ z."""
    dim = len(prior["mean"])
    return (
        prior["mean"]
        + spread * rng.standard_normal((count, dim)).astype(np.float32) @ prior["factor"].T
    )


def sample_separated(
    n: int,
    dim: int,
    seed: int,
    tau: float = 0.3,
    block: int = 4096,
    max_draws: int | None = None,
    draw: Callable[[np.random.Generator, int], np.ndarray] | None = None,
) -> np.ndarray:
    """n unit vectors with pairwise cosine <= ``tau`` (greedy rejection in blocks).

    Raises if the bound cannot be met within ``max_draws`` candidates (too many
    identities for the dimension and tau).
    """
    if n <= 0:
        raise ValueError("the number of identities must be positive")
    rng = np.random.default_rng(seed)
    accepted = np.empty((n, dim), dtype=np.float32)
    count, drawn = 0, 0
    max_draws = max_draws or 50 * n + 10 * block
    while count < n:
        if drawn >= max_draws:
            raise RuntimeError(
                f"only {count} of {n} identities found with cosine <= {tau} after {drawn} "
                f"draws in {dim} dimensions: lower n or raise tau"
            )
        candidates = _unit(draw(rng, block) if draw else rng.standard_normal((block, dim)))
        drawn += block
        ok = np.ones(block, dtype=bool)
        for start in range(0, count, block):  # against accepted identities, blockwise
            sims = candidates @ accepted[start : min(count, start + block)].T
            ok &= sims.max(axis=1) <= tau
        block_start = count
        for index in np.flatnonzero(ok):  # greedy within the block
            if count == n:
                break
            vector = candidates[index]
            if count > block_start and (accepted[block_start:count] @ vector).max() > tau:
                continue
            accepted[count] = vector
            count += 1
    return accepted


def sample_two_stage(
    n: int,
    seed: int,
    generate_unconditional: Callable[[int, int], np.ndarray],
    embed: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """Embeddings of n unconditional samples: ``generate_unconditional(n, seed)`` returns
    aligned faces (n x 112 x 112 x 3 uint8), ``embed`` maps them to unit vectors; rows
    that fail to embed (NaN) are redrawn with the next seed."""
    vectors: list[np.ndarray] = []
    attempt = 0
    while len(vectors) < n and attempt < 10:
        faces = generate_unconditional(n - len(vectors), seed + attempt)
        embedded = embed(faces)
        vectors.extend(v for v in embedded if np.all(np.isfinite(v)))
        attempt += 1
    if len(vectors) < n:
        raise RuntimeError(f"two-stage sampling embedded only {len(vectors)} of {n} faces")
    return _unit(np.stack(vectors[:n]))


def make_identities(
    n: int,
    dim: int,
    seed: int,
    method: str = "uniform",
    tau: float = 0.3,
    embedder: str = "",
    prior: str | Path | None = None,
    spread: float = 1.0,
    **two_stage,
) -> IdentityTable:
    """Build an identity table by ``method``; identity i's seed is seed * 1_000_003 + i."""
    if method == "uniform":
        embeddings = sample_uniform(n, dim, seed)
    elif method == "separated":
        embeddings = sample_separated(n, dim, seed, tau)
    elif method == "two_stage":
        embeddings = sample_two_stage(n, seed, **two_stage)
    elif method == "fitted":
        if prior is None:
            raise ValueError("the 'fitted' identity method needs the generator's prior file")
        embeddings = sample_fitted(n, dim, seed, prior, tau, spread)
    else:
        raise ValueError(f"unknown identity method {method!r}; use one of {METHODS}")
    ids = np.arange(n, dtype=np.int64)
    return IdentityTable(ids, embeddings, seed * 1_000_003 + ids, method, embedder)


def draw_identities(settings, seed: int, space, n: int | None = None) -> IdentityTable:
    """``n`` identities (default ``settings.count``) by the settings' method in the
    generator's identity space (``generators.families.IdentitySpace``)."""
    prior = space.prior if space.prior is not None and Path(space.prior).is_file() else None
    want = n or settings.count
    if settings.select == "predicted":  # a pool, then the subset drawn apart (realisation.py)
        from facefoundry.generators.realisation import predicted_subset

        pool = settings.model_copy(update={"select": "drawn"})
        candidates = draw_identities(pool, seed, space, math.ceil(want * settings.pool))
        return predicted_subset(candidates, want, space.realisation)
    return make_identities(
        want,
        space.dim,
        seed,
        settings.method,
        settings.tau,
        embedder=space.embedder,
        prior=prior,
        spread=settings.spread,
    )


def write_identities(path: str | Path, settings, seed: int, space) -> int:
    """The identities stage without probing: draw ``settings.count`` identities and save
    them to ``path``."""
    table = draw_identities(settings, seed, space)
    table.save(path)
    return len(table)
