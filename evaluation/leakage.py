"""Identity leakage: do synthetic identities copy the people the generator was trained on?

The default generator learnt from the LFW DevTrain people (``peopleDevTrain.txt``,
4,038 people), so a synthetic identity may be a near-copy of one of them. A fixed
pair threshold (e.g. the FMR 1e-3 cosine) is the wrong ruler here: the figure is a
*maximum* over thousands of training centroids, and that maximum is high even for
real people the generator never saw. So the threshold is calibrated on unseen real
people (``peopleDevTest.txt``, disjoint from DevTrain): a synthetic identity leaks
when its centroid's nearest DevTrain centroid is more similar than the ``quantile``
(99th percentile) of the same figure for DevTest people. Data that copies training
people no more than real strangers do then scores ``leak_rate`` ~ 1 - quantile.

Embeddings go through the run's own path (YuNet, the embedder's ``prepare`` crop,
no flip), as the filter's embed stage and the FMR calibrations do, so synthetic
and real centroids are comparable. Per-image results are cached under the cache
folder, keyed by the people file and the embedder's weights (checksum).

    ref = leak_reference("dlib")
    figures = ref.leak_rate(synthetic_centroids)  # or leak_rate(c, ref.centroids, ref.threshold)
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from facefoundry.atomic import atomic_open
from facefoundry.evaluation.lfw import Lfw, cache_dir, people_images, read_people
from facefoundry.filters.groups import centroids, valid_rows
from facefoundry.filters.neighbours import nearest_in

if TYPE_CHECKING:
    from facefoundry.faces import Embedder

logger = logging.getLogger(__name__)

TRAIN_PEOPLE = "peopleDevTrain.txt"
UNSEEN_PEOPLE = "peopleDevTest.txt"
PAIR_FMR = 1e-3
CACHE_VERSION = 1


def person_centroids(vectors: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit mean embedding per person: (sorted person labels, P x dim centroids).

    Rows that are NaN, infinite or zero (no usable face) are skipped; people left
    without any usable row are left out, so every returned centroid is a unit vector.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    labels = np.asarray(labels)
    if len(vectors) != len(labels):
        raise ValueError(f"{len(vectors)} vectors but {len(labels)} labels")
    ok = valid_rows(vectors)
    names, groups = np.unique(labels[ok], return_inverse=True)
    centres, _ = centroids(vectors[ok], groups.reshape(-1), len(names))
    return names, centres


def nearest_similarity(
    queries: np.ndarray, references: np.ndarray, block: int = 2048
) -> tuple[np.ndarray, np.ndarray]:
    """Most similar reference row of each query: (index, cosine), exact float32.

    Queries go through in blocks (``filters.neighbours.nearest_in``), so memory stays
    at one block x references tile however many synthetic identities there are.
    """
    queries = np.asarray(queries, dtype=np.float32)
    references = np.asarray(references, dtype=np.float32)
    if len(queries) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    if len(references) == 0:
        raise ValueError("no reference rows to compare with")
    return nearest_in(queries, references, block=block)


def calibrate_leak_threshold(
    unseen_centroids: np.ndarray, training_centroids: np.ndarray, quantile: float = 0.99
) -> float:
    """The ``quantile`` of unseen real people's nearest-training-centroid cosine.

    Unseen people cannot have leaked, so this is how close a stranger gets to *some*
    training person by chance; only about ``1 - quantile`` of strangers exceed it.
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    unseen = np.asarray(unseen_centroids, dtype=np.float32)
    unseen = unseen[valid_rows(unseen)]
    if len(unseen) == 0:
        raise ValueError("no usable unseen centroids to calibrate on")
    _, cos = nearest_similarity(unseen, training_centroids)
    return float(np.quantile(cos.astype(np.float64), quantile))


def leak_rate(
    synthetic_centroids: np.ndarray,
    training_centroids: np.ndarray,
    threshold: float,
    training_names: np.ndarray | None = None,
) -> dict:
    """Share of synthetic identities whose nearest training centroid exceeds ``threshold``.

    Returns ``leak_rate``, ``leaked`` (count), ``identities`` (usable centroids; zero
    or NaN rows, e.g. identities the filter emptied, are not counted), ``threshold``
    and, for the flagged ones, most similar first: ``flagged`` (row index into
    ``synthetic_centroids``), ``nearest`` (training name, or index without names)
    and ``nearest_cos``.
    """
    synthetic = np.asarray(synthetic_centroids, dtype=np.float32)
    rows = np.flatnonzero(valid_rows(synthetic))
    index, cos = nearest_similarity(synthetic[rows], training_centroids)
    hit = cos > threshold
    order = np.argsort(-cos[hit], kind="stable")
    flagged, nearest, nearest_cos = rows[hit][order], index[hit][order], cos[hit][order]
    labels = np.asarray(training_names)[nearest] if training_names is not None else nearest
    identities = len(rows)
    return {
        "leak_rate": float(hit.sum() / identities) if identities else float("nan"),
        "leaked": int(hit.sum()),
        "identities": identities,
        "threshold": float(threshold),
        "flagged": [int(i) for i in flagged],
        "nearest": [n.item() if isinstance(n, np.generic) else n for n in labels],
        "nearest_cos": [float(c) for c in nearest_cos],
    }


# --- real LFW people --------------------------------------------------------------------


def _people_path(people_file: str | Path, lfw: Lfw) -> Path:
    path = Path(people_file)
    return path if path.is_file() else lfw.protocol_file(str(people_file))


def people_cache_path(people_path: Path, embedder: Embedder, detector: str = "yunet") -> Path:
    """Cache file for one people file x embedder weights x detector (content-hashed list)."""
    listing = hashlib.sha256(people_path.read_bytes()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in embedder.name)
    name = f"{people_path.stem}-{listing}-{detector}-{safe}-{embedder.checksum[:12]}.npz"
    return cache_dir() / "lfw" / "people" / name


def real_people_embeddings(
    people_file: str | Path,
    embedder: str,
    lfw: Lfw | str | Path | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Per image of every person in an LFW people file: (person name, unit embedding).

    ``people_file`` is a protocol name ("peopleDevTrain.txt") or a path in that format.
    Images are detected with YuNet, cut with the embedder's own crop (``prepare``:
    ArcFace 112 px alignment for SFace, dlib's chip for dlib) and embedded without
    flip, as the embed stage does for synthetic images; images without a face are NaN
    rows (``person_centroids`` skips them). Cached as .npz under
    ``$FACEFOUNDRY_CACHE_DIR/lfw/people``, keyed by the file's content and the
    embedder's checksum, since vectors are only comparable within one set of weights.
    """
    from facefoundry.faces import get_embedder, process_images_parallel

    lfw = lfw if isinstance(lfw, Lfw) else Lfw(lfw)
    path = _people_path(people_file, lfw)
    images, index = people_images(read_people(path))
    persons = np.array([name.split("/", 1)[0] for name in images])
    model = get_embedder(embedder)
    cache = people_cache_path(path, model)
    if cache.is_file():
        with np.load(cache, allow_pickle=False) as data:
            if int(data["version"]) == CACHE_VERSION and [str(n) for n in data["images"]] == images:
                return persons, data["vectors"].astype(np.float32)
        logger.warning("ignoring stale cache %s", cache)
    started = time.perf_counter()
    result = process_images_parallel(
        list(lfw.read_many(images)),
        "yunet",
        embedder,
        workers=workers,
        progress=progress,
        description=f"embed {path.name} ({model.name})",
        no_face="reject",
    )
    vectors = np.asarray(result.embeddings, dtype=np.float32)
    status = np.array([o.status for o in result.outcomes])
    logger.info(
        "%s with %s: %d images, %s, %.0f s",
        path.name,
        model.name,
        len(images),
        result.summary(),
        time.perf_counter() - started,
    )
    cache.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(cache) as handle:
        np.savez(
            handle,
            version=np.array(CACHE_VERSION),
            images=np.array(images),
            person_index=np.asarray(index, dtype=np.int32),
            vectors=vectors,
            status=status,
            embedder=np.array(model.name),
            checksum=np.array(model.checksum),
        )
    return persons, vectors


@dataclass
class LeakReference:
    """Training people's centroids plus the leak threshold calibrated on unseen people.

    ``threshold`` is a cosine for ``embedder`` (these weights only). The unseen
    people's own figures are kept so the calibration can be inspected:
    ``unseen_nearest_cos`` per unseen person, and the share of them that a fixed
    pair threshold (FMR 1e-3) would already call a leak.
    """

    embedder: str
    checksum: str
    names: np.ndarray
    centroids: np.ndarray
    threshold: float
    quantile: float
    train_people: str
    unseen_people: str
    unseen_names: np.ndarray
    unseen_nearest: np.ndarray  # training name nearest to each unseen person
    unseen_nearest_cos: np.ndarray
    images: dict[str, int] = field(default_factory=dict)
    pair_threshold: float | None = None  # cosine at FMR 1e-3, when calibrated
    unseen_flag_rate_at_pair_threshold: float | None = None

    @property
    def unseen_over_threshold(self) -> int:
        """Unseen people above ``threshold`` (about ``(1 - quantile)`` of them by design)."""
        return int((self.unseen_nearest_cos > self.threshold).sum())

    def leak_rate(self, synthetic_centroids: np.ndarray) -> dict:
        """``leak_rate`` against these training people, with their names for the flagged."""
        return leak_rate(synthetic_centroids, self.centroids, self.threshold, self.names)

    def summary(self) -> dict:
        """The scalar figures, for reports."""
        unseen = len(self.unseen_names)
        return {
            "embedder": self.embedder,
            "checksum": self.checksum,
            "train_people": self.train_people,
            "unseen_people": self.unseen_people,
            "training_identities": len(self.names),
            "unseen_identities": unseen,
            **{f"{k}_images": v for k, v in self.images.items()},
            "quantile": self.quantile,
            "threshold": self.threshold,
            "unseen_over_threshold": self.unseen_over_threshold,
            "unseen_rate_over_threshold": self.unseen_over_threshold / unseen if unseen else None,
            "pair_threshold_fmr_1e-3": self.pair_threshold,
            "unseen_flag_rate_at_pair_threshold": self.unseen_flag_rate_at_pair_threshold,
        }


def _pair_threshold(name: str, checksum: str) -> float | None:
    from facefoundry.filters.calibrate import CalibrationError, find_calibration

    try:
        return find_calibration(name, checksum, warn=False).cos_at(PAIR_FMR)
    except CalibrationError as error:
        logger.info("no FMR %g pair threshold for %s: %s", PAIR_FMR, name, error)
        return None


def leak_reference(
    embedder: str,
    train_people: str | Path = TRAIN_PEOPLE,
    unseen_people: str | Path = UNSEEN_PEOPLE,
    *,
    lfw: Lfw | str | Path | None = None,
    quantile: float = 0.99,
    workers: int = 1,
    progress: bool = True,
) -> LeakReference:
    """Training centroids + leak threshold for one embedder (first call embeds LFW; cached).

    The two people files must not share anyone: an unseen person who is also a
    training person would calibrate the threshold on a true copy.
    """
    from facefoundry.faces import get_embedder

    lfw = lfw if isinstance(lfw, Lfw) else Lfw(lfw)
    model = get_embedder(embedder)
    train_labels, train_vectors = real_people_embeddings(
        train_people, embedder, lfw, workers=workers, progress=progress
    )
    unseen_labels, unseen_vectors = real_people_embeddings(
        unseen_people, embedder, lfw, workers=workers, progress=progress
    )
    shared = set(train_labels) & set(unseen_labels)
    if shared:
        raise ValueError(
            f"{len(shared)} people are in both {train_people} and {unseen_people} "
            f"(e.g. {sorted(shared)[:3]}): unseen people must be unseen"
        )
    names, centres = person_centroids(train_vectors, train_labels)
    unseen_names, unseen_centres = person_centroids(unseen_vectors, unseen_labels)
    index, cos = nearest_similarity(unseen_centres, centres)
    threshold = float(np.quantile(cos.astype(np.float64), quantile))
    pair = _pair_threshold(model.name, model.checksum)
    return LeakReference(
        embedder=model.name,
        checksum=model.checksum,
        names=names.astype(str),
        centroids=centres,
        threshold=threshold,
        quantile=quantile,
        train_people=Path(train_people).name,
        unseen_people=Path(unseen_people).name,
        unseen_names=unseen_names.astype(str),
        unseen_nearest=names[index].astype(str),
        unseen_nearest_cos=cos,
        images={
            "train": len(train_labels),
            "train_usable": int(valid_rows(train_vectors).sum()),
            "unseen": len(unseen_labels),
            "unseen_usable": int(valid_rows(unseen_vectors).sum()),
        },
        pair_threshold=pair,
        unseen_flag_rate_at_pair_threshold=None if pair is None else float((cos > pair).mean()),
    )
