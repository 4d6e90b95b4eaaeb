"""Seeded synthetic embeddings for tests and benchmarks: identities as noisy unit vectors.

An identity is a random unit centre; its samples are ``normalise(centre + noise * g)``
with g standard normal per dimension, so the cosine of a sample to its centre is
about 1 / sqrt(1 + noise^2 * dim).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.filters.samples import META_PREFIX, fixed_list


def unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def random_unit(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors, uniform on the sphere (float32)."""
    rng = np.random.default_rng(seed)
    return unit(rng.standard_normal((n, dim), dtype=np.float32))


def at_cosine(base: np.ndarray, cos: np.ndarray | float, seed: int = 0) -> np.ndarray:
    """Unit vectors with exactly the given cosine to each base row (random direction otherwise)."""
    base = unit(base)
    rng = np.random.default_rng(seed)
    cos = np.broadcast_to(np.asarray(cos, dtype=np.float64), (len(base),))[:, None]
    other = rng.standard_normal(base.shape)
    other -= (other * base).sum(axis=1, keepdims=True) * base  # orthogonal to base
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    return (cos * base + np.sqrt(1.0 - cos**2) * other).astype(np.float32)


def plant_duplicates(
    n: int, dim: int, n_planted: int, cos_range: tuple[float, float], seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random unit centroids where rows ``dup[i]`` copy rows ``orig[i]`` at a cosine in range.

    Returns (vectors, orig, dup); the planted rows are distinct and disjoint.
    """
    rng = np.random.default_rng(seed)
    vectors = random_unit(n, dim, seed)
    chosen = rng.choice(n, size=2 * n_planted, replace=False)
    orig, dup = chosen[:n_planted], chosen[n_planted:]
    cos = rng.uniform(*cos_range, size=n_planted)
    vectors[dup] = at_cosine(vectors[orig], cos, seed + 1)
    return vectors, orig, dup


def identity_samples(
    centres: np.ndarray, per_identity: int | np.ndarray, noise: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(samples, identity index per sample) around the given unit centres."""
    rng = np.random.default_rng(seed)
    counts = np.broadcast_to(np.asarray(per_identity), (len(centres),))
    identity = np.repeat(np.arange(len(centres)), counts)
    noisy = centres[identity] + noise * rng.standard_normal((len(identity), centres.shape[1]))
    return unit(noisy), identity


def write_embed_part(
    path: str | Path,
    keys: list[str],
    identities: np.ndarray,
    embeddings: dict[str, np.ndarray],
    *,
    status: list[str] | None = None,
    n_faces: np.ndarray | None = None,
    det_score: np.ndarray | None = None,
    checksums: dict[str, str] | None = None,
) -> Path:
    """Write an embed part the way the embed stage does (one ``embedding_<name>`` per model)."""
    n = len(keys)
    columns = {
        "key": pa.array(keys, type=pa.string()),
        "status": pa.array(status or ["ok"] * n, type=pa.string()),
        "n_faces": pa.array(np.ones(n, np.int64) if n_faces is None else n_faces, type=pa.int64()),
        "det_score": pa.array(
            np.full(n, 0.95) if det_score is None else det_score, type=pa.float64()
        ),
        "identity": pa.array(np.asarray(identities).tolist()),
    }
    for name, vectors in embeddings.items():
        columns[f"embedding_{name}"] = fixed_list(vectors)
    table = pa.table(columns)
    meta = {f"{META_PREFIX}{k}.checksum": v for k, v in (checksums or {}).items()}
    if meta:
        table = table.replace_schema_metadata(meta)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path
