"""Privacy filter: no synthetic identity may match a real person of a reference set.

The reference set holds real embeddings (e.g. the generator's training images),
embedded with the same model as the synthetic centroids it is compared with.
A synthetic identity is dropped when its centroid's cosine similarity to ANY
reference identity exceeds ``tau`` (DCFace: cos > 0.3 to any training subject,
scored with a model other than the conditioning one). Against ``centroids`` (one
unit mean per real identity, the default) or against every reference ``samples``
row (stricter: also catches a copy of a single real image).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facefoundry.filters.groups import centroids, valid_rows
from facefoundry.filters.neighbours import nearest_in
from facefoundry.filters.samples import embedder_name, read_samples

if TYPE_CHECKING:
    from facefoundry.evaluation.leakage import LeakReference

logger = logging.getLogger(__name__)


@dataclass
class ReferenceSet:
    """Real unit vectors and the identity name of each row (``names[i]`` for ``vectors[i]``)."""

    vectors: np.ndarray
    names: np.ndarray
    embedder: str
    checksum: str | None = None
    against: str = "centroids"

    def __len__(self) -> int:
        return len(self.vectors)


def reference_from_arrays(
    vectors: np.ndarray,
    identities: np.ndarray,
    embedder: str,
    against: str = "centroids",
    checksum: str | None = None,
) -> ReferenceSet:
    """A reference set from real embeddings and their identities; invalid rows are dropped."""
    if against not in ("centroids", "samples"):
        raise ValueError(f"against must be 'centroids' or 'samples', got {against!r}")
    vectors = np.asarray(vectors, dtype=np.float32)
    identities = np.asarray(identities)
    ok = valid_rows(vectors)
    if not ok.any():
        raise ValueError("the reference set has no usable embeddings")
    if against == "samples":
        return ReferenceSet(vectors[ok], identities[ok].astype(str), embedder, checksum, against)
    names, groups = np.unique(identities[ok], return_inverse=True)
    centres, _ = centroids(vectors[ok], groups.reshape(-1), len(names))
    return ReferenceSet(centres, names.astype(str), embedder, checksum, against)


def load_reference(path: str | Path, embedder: str, against: str = "centroids") -> ReferenceSet:
    """Read real embeddings (a parquet file or a folder of embed parts) for one embedder.

    Identities come from an ``identity`` column or from the key's folder
    (``Name/Name_0001.jpg``), as for candidate samples.
    """
    table = read_samples(path, [embedder])
    name = embedder_name(embedder)
    vectors = table.vectors(name)
    reference = reference_from_arrays(
        vectors, table.identities, name, against, table.checksums.get(name)
    )
    logger.info("reference set %s: %d %s of %s", path, len(reference), against, name)
    return reference


def reference_from_leak_reference(ref: LeakReference) -> ReferenceSet:
    """The generator's training people (``evaluation.leakage``) as a privacy reference set.

    Use ``ref.threshold`` as ``tau``: it is calibrated on real people the generator
    never saw, where a fixed pair threshold flags most strangers (nearest of thousands).
    """
    return ReferenceSet(
        np.asarray(ref.centroids, dtype=np.float32),
        np.asarray(ref.names).astype(str),
        ref.embedder,
        ref.checksum,
        "centroids",
    )


@dataclass
class PrivacyResult:
    """Per synthetic centroid: ``flagged`` (cos > tau), nearest real identity name and cosine."""

    flagged: np.ndarray
    nearest: np.ndarray
    nearest_cos: np.ndarray


def privacy_check(
    centres: np.ndarray,
    reference: ReferenceSet,
    tau: float,
    *,
    block: int = 2048,
    backend: str = "auto",
) -> PrivacyResult:
    """Nearest real identity of each synthetic centroid; flag those above ``tau`` (cosine)."""
    centres = np.asarray(centres, dtype=np.float32)
    if len(centres) == 0:
        empty = np.zeros(0)
        return PrivacyResult(empty.astype(bool), empty.astype(object), empty.astype(np.float32))
    index, cos = nearest_in(centres, reference.vectors, block=block, backend=backend)
    flagged = cos > tau
    logger.info(
        "privacy at cos > %.4f: %d of %d identities match a real one",
        tau,
        flagged.sum(),
        len(centres),
    )
    return PrivacyResult(flagged, reference.names[index].astype(object), cos)
