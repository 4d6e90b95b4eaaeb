"""Privacy filter: no synthetic identity may match a real person of a reference set.

The reference set holds real embeddings (e.g. the generator's training images),
embedded with the same model as the synthetic centroids it is compared with.
A synthetic identity is dropped when its centroid's cosine similarity to ANY
reference identity exceeds ``tau`` (DCFace: cos > 0.3 to any training subject,
scored with a model other than the conditioning one). Against ``centroids`` (one
unit mean per real identity, the default) or against every reference ``samples``
row (stricter: also catches a copy of a single real image).

Default reference (``training_reference``): when the generator's model folder records
its training set (``generators.training_record``: LFW people), those people's
centroids, compared at the threshold calibrated on unseen real people
(``evaluation.leakage``), not at a pair FMR: the nearest of thousands of training people
is close to a stranger by chance, and the calibrated cosine allows for that.
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
    from facefoundry.evaluation.lfw import Lfw
    from facefoundry.generators.training_record import TrainingRecord

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
class TrainingReference:
    """A generator's training people as its privacy reference, with the calibrated ``tau``."""

    reference: ReferenceSet
    leak: LeakReference
    record: TrainingRecord
    model: str

    @property
    def tau(self) -> float:
        return self.leak.threshold

    def note(self) -> str:
        """One line for the report: who the reference is and where tau comes from."""
        return (
            f"{len(self.reference)} training people of {self.model} ({self.leak.train_people}), "
            f"calibrated tau {self.tau:.4f} = {100 * self.leak.quantile:g}th percentile of "
            f"the nearest-training-person cosine of {len(self.leak.unseen_names)} unseen "
            f"{self.leak.unseen_people} people"
        )


def _embed_workers() -> int:
    """Processes for the first (uncached) embedding of the training people: every core
    of a plain process (the cold embed is minutes long), one inside a daemonic worker
    (a Dask or pool worker may not start processes)."""
    import multiprocessing
    import os

    if multiprocessing.current_process().daemon:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def training_reference(
    model_dir: str | Path | None,
    embedder: str,
    *,
    lfw: Lfw | str | Path | None = None,
    progress: bool = False,
) -> TrainingReference | None:
    """The training people recorded in a generator's model folder, or None without a record.

    Only LFW training sets have a real reference here (``leak_reference``: their
    people's centroids with ``embedder``, and tau = the 99th percentile of the
    nearest-training-person cosine of the record's unseen people, default DevTest).
    The first call per embedder embeds those LFW people (minutes on a CPU); later calls
    read the cache. Raises ``LfwNotFoundError`` when the record names LFW people but LFW
    is not found.
    """
    from facefoundry.generators.training_record import read_training_record

    record = read_training_record(model_dir)
    if record is None or record.lfw_people is None:
        return None
    from facefoundry.evaluation.leakage import UNSEEN_PEOPLE, leak_reference

    logger.info("privacy reference: the %s people %s was trained on", record.lfw_people, model_dir)
    leak = leak_reference(
        embedder,
        train_people=record.lfw_people,
        unseen_people=record.unseen_people or UNSEEN_PEOPLE,
        lfw=lfw,
        workers=_embed_workers(),
        progress=progress,
    )
    return TrainingReference(reference_from_leak_reference(leak), leak, record, str(model_dir))


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
