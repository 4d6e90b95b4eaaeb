"""Realised identities: probe each candidate identity before generating its samples.

A sampled condition vector is only a request: the generator may draw a face that is
not detectable, does not follow the condition, or looks like another identity already
in the set. The probe funnel (issue 16, lever 2) draws one small probe (``samples``
images) per candidate, embeds it with the filter's detector and embedder, and keeps a
candidate only if

1. the probe's images are detectable faces (detector score >= the filter's
   ``min_det_score``),
2. optionally, they follow the condition (``min_condition_cos``), and
3. the probe's centroid is separated from every identity kept so far: cosine <= the
   filter's de-duplication threshold ``tau_inter`` (calibrated on real LFW people).

A probe's images are the candidate's first samples (the run's own seeds; CPU sampling is
batch-invariant, so the bulk generation draws the same images again). With ``select:
first`` candidates are probed in rounds, in candidate order, until ``count`` are kept
or the pool (``count x candidates``) is spent. With ``select: separated`` the whole pool
is probed and the ``count`` whose probe centroids are separated at the tightest
threshold that keeps ``count`` are kept (``realisation.select_separated``): a centroid
of a few images still carries per-image noise, so probes look further apart than the
8-image centroids the filter judges, and a fixed tau_inter lets crowded identities
through (BENCHMARKS.md, session 10). ``select: largest`` keeps the largest separated set
instead of walking candidates in order (``realisation.select_largest``), so the same pool
holds ``count`` at a tighter threshold (BENCHMARKS.md, session 48). The kept identities
are then generated in bulk; with ``condition: probe`` they are conditioned on their probe's centroid (what the
model can actually draw, as DCFace and Vec2Face do) instead of the requested vector.
The funnel (every candidate's outcome) is written beside the identity table.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from facefoundry.errors import FacefoundryError, UsageError
from facefoundry.generators.identities import IdentityTable, draw_identities

logger = logging.getLogger(__name__)


class NoIdentityRealised(FacefoundryError):
    """Not one candidate drew a usable, separated face: the generator cannot serve."""


class ProbeCentroidsNotStored(UsageError):
    """A funnel written before ``probes.parquet`` kept each probe's centroid."""


KEPT = "kept"
NO_FACE = "no_face"
OFF_CONDITION = "off_condition"
DUPLICATE = "duplicate"
NOT_NEEDED = "not_probed"


@dataclass
class ProbeDecisions:
    """Per candidate: outcome, cosine to its condition, nearest kept probe and its cosine."""

    outcome: list[str]
    condition_cos: np.ndarray
    nearest: np.ndarray
    nearest_cos: np.ndarray
    centroids: np.ndarray
    kept_rows: list[int] = field(default_factory=list)

    def funnel(self) -> dict:
        counts = {name: self.outcome.count(name) for name in dict.fromkeys(self.outcome)}
        probed = len(self.outcome) - counts.get(NOT_NEEDED, 0)
        return {"candidates": len(self.outcome), "probed": probed, **counts}


def probe_centroids(vectors: np.ndarray, usable: np.ndarray, samples: int) -> np.ndarray:
    """Unit centroid of each candidate's usable probe rows (NaN where none); rows are
    ``samples`` consecutive rows per candidate."""
    vectors = vectors.reshape(-1, samples, vectors.shape[-1])
    usable = usable.reshape(-1, samples)
    safe = np.where(usable[..., None], np.nan_to_num(vectors), 0.0)
    sums = safe.sum(axis=1)
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    out = np.full(sums.shape, np.nan, dtype=np.float32)
    fine = usable.all(axis=1) & (norms[:, 0] > 0)
    out[fine] = sums[fine] / norms[fine]
    return out


def decide(
    centroids: np.ndarray,
    conditions: np.ndarray,
    tau: float,
    want: int,
    min_condition_cos: float | None = None,
    decisions: ProbeDecisions | None = None,
    offset: int = 0,
) -> ProbeDecisions:
    """Greedy realisation in candidate order (extends ``decisions`` for later rounds):
    a candidate is kept when its probe centroid exists (a face in every probe image),
    follows its condition if asked, and has cosine <= ``tau`` to every kept centroid."""
    n = len(centroids)
    condition_cos = np.full(n, np.nan, dtype=np.float32)
    if conditions.shape == centroids.shape:  # conditions live in the filter's space
        conditions = conditions / np.linalg.norm(conditions, axis=1, keepdims=True)
        condition_cos = np.sum(np.nan_to_num(centroids) * conditions, axis=1)
    if decisions is None:
        decisions = ProbeDecisions(
            [], np.zeros(0), np.zeros(0, np.int64), np.zeros(0), centroids[:0]
        )
    outcome = list(decisions.outcome)
    nearest = np.full(n, -1, dtype=np.int64)
    nearest_cos = np.full(n, np.nan, dtype=np.float32)
    kept_rows = list(decisions.kept_rows)
    kept_vectors = [decisions.centroids[row] for row in kept_rows]
    all_centroids = np.concatenate([decisions.centroids, centroids])
    for row in range(n):
        if len(kept_rows) >= want:
            outcome.append(NOT_NEEDED)
            continue
        if not np.isfinite(centroids[row]).all():
            outcome.append(NO_FACE)
            continue
        if kept_vectors:
            similarity = np.stack(kept_vectors) @ centroids[row]
            best = int(np.argmax(similarity))
            nearest[row], nearest_cos[row] = kept_rows[best], similarity[best]
        if min_condition_cos is not None and condition_cos[row] < min_condition_cos:
            outcome.append(OFF_CONDITION)
        elif kept_vectors and nearest_cos[row] > tau:
            outcome.append(DUPLICATE)
        else:
            outcome.append(KEPT)
            kept_rows.append(offset + row)
            kept_vectors.append(centroids[row])
    return ProbeDecisions(
        outcome,
        np.concatenate([decisions.condition_cos, condition_cos]),
        np.concatenate([decisions.nearest, nearest]),
        np.concatenate([decisions.nearest_cos, nearest_cos]),
        all_centroids,
        kept_rows,
    )


def decide_separated(
    centroids: np.ndarray,
    conditions: np.ndarray,
    want: int,
    min_condition_cos: float | None = None,
    select: str = "separated",
) -> tuple[ProbeDecisions, float]:
    """(decisions, threshold): of the candidates whose probe found faces (and follows
    its condition if asked), the ``want`` kept at the tightest separation that keeps
    them all (fewer when fewer qualify); the others are duplicates of their nearest kept.
    ``select``: ``separated`` (a greedy pass in candidate order) or ``largest`` (the
    largest separated set, fewest collisions first: a tighter threshold)."""
    from facefoundry.generators.realisation import select_largest, select_separated

    screened = decide(centroids, conditions, 1.0, len(centroids), min_condition_cos)
    eligible = np.array(screened.kept_rows, dtype=np.int64)
    if not len(eligible):
        return screened, float("nan")
    choose = select_largest if select == "largest" else select_separated
    chosen, threshold = choose(centroids[eligible], min(want, len(eligible)))
    kept_rows = sorted(int(row) for row in eligible[chosen])
    kept = centroids[kept_rows]
    outcome = list(screened.outcome)
    nearest = np.full(len(centroids), -1, dtype=np.int64)
    nearest_cos = np.full(len(centroids), np.nan, dtype=np.float32)
    for row in eligible:
        similarity = kept @ centroids[row]
        if row in kept_rows:
            similarity[kept_rows.index(row)] = -np.inf
        else:
            outcome[row] = DUPLICATE
        best = int(np.argmax(similarity))
        if np.isfinite(similarity[best]):
            nearest[row], nearest_cos[row] = kept_rows[best], similarity[best]
    decisions = ProbeDecisions(
        outcome, screened.condition_cos, nearest, nearest_cos, centroids, kept_rows
    )
    return decisions, float(threshold)


def candidate_pool(settings) -> int:
    """How many identities the identities stage draws: the count, or the probe's pool."""
    if settings.probe is None:
        return settings.count
    return max(settings.count, math.ceil(settings.count * settings.probe.candidates))


def realise_identities(folder: str | Path, recipe, space) -> dict:
    """The identities stage with probing: candidates -> probes -> kept identities.

    Writes ``identities.parquet`` (the kept identities, candidate ids kept), and beside it
    ``candidates.parquet``, ``probes/`` (the probe chunks) and ``probe_funnel.json``.
    """
    from facefoundry.faces.embedders import get_embedder
    from facefoundry.faces.settings import embed_workers
    from facefoundry.filters.calibrate import resolve_threshold
    from facefoundry.filters.samples import embedder_name
    from facefoundry.generators.families import family_of

    settings = recipe.identities
    probe = settings.probe
    folder = Path(folder)
    pool = candidate_pool(settings)
    candidates = draw_identities(settings, recipe.seed, space, pool)
    candidates_path = candidates.save(folder / "candidates.parquet")
    embedder = recipe.filter.embedder
    same_space = embedder_name(space.embedder or "") == embedder_name(embedder)
    if not same_space and (probe.condition == "probe" or probe.min_condition_cos is not None):
        raise UsageError(
            f"identities.probe: condition 'probe' and min_condition_cos compare the probe's "
            f"{embedder_name(embedder)} embedding with the generator's condition, but the "
            f"generator is conditioned on {space.embedder or 'unnamed'} vectors; use "
            "condition: original and no min_condition_cos"
        )
    tau = 1.0  # de-duplication off in the filter: probes only need a face
    if recipe.filter.tau_inter is not None:  # the filter's cosine, for these very weights
        tau = resolve_threshold(
            recipe.filter.tau_inter,
            embedder,
            get_embedder(embedder).checksum,
            location=recipe.filter.calibration,
        ).cos
    module = family_of(recipe.generate).load()
    probe_settings = recipe.generate.model_copy(update={"samples_per_identity": probe.samples})
    separated = probe.select in ("separated", "largest")
    workers = embed_workers(  # as the embed stage: probes are judged as samples
        recipe.faces, recipe.orchestration.runner, recipe.orchestration.max_workers
    )
    decisions: ProbeDecisions | None = None
    start, part = 0, 0
    probed: list[np.ndarray] = []
    while start < pool and (
        separated or decisions is None or len(decisions.kept_rows) < settings.count
    ):
        kept = 0 if decisions is None else len(decisions.kept_rows)
        if separated:  # the whole pool: chunks of the generate stage's size, so a killed
            size = min(pool - start, recipe.generate.chunk_identities)  # run resumes
        else:
            size = min(pool - start, max(8, 2 * (settings.count - kept)))
        ids = [int(i) for i in candidates.ids[start : start + size]]
        parquet = module.generate_chunk(  # the run's own seeds: probes are first samples
            candidates_path, ids, folder / "probes", part, probe_settings, recipe.seed
        )
        vectors, usable = _embed_probe_chunk(
            Path(parquet).with_suffix(".tar"),
            ids,
            probe.samples,
            embedder,
            workers,
            recipe.faces,
            recipe.filter,
        )
        centroids = probe_centroids(vectors, usable, probe.samples)
        probed.append(centroids)
        if separated:
            logger.info("probe round %d: %d of %d candidates probed", part, start + size, pool)
        else:
            decisions = decide(
                centroids,
                candidates.embeddings[start : start + size],
                tau,
                settings.count,
                probe.min_condition_cos,
                decisions,
                offset=start,
            )
            logger.info(
                "probe round %d: %d of %d identities realised",
                part,
                len(decisions.kept_rows),
                settings.count,
            )
        start, part = start + size, part + 1
    threshold = None
    if separated:
        decisions, threshold = decide_separated(
            np.concatenate(probed),
            candidates.embeddings[:start],
            settings.count,
            probe.min_condition_cos,
            probe.select,
        )
    rows = np.array(decisions.kept_rows, dtype=np.int64)
    funnel = {
        **decisions.funnel(),
        "wanted": settings.count,
        "realised": len(rows),
        "tau_inter": tau,
        **({"separation": round(threshold, 4)} if separated else {}),
    }
    _write_decisions(folder, candidates, decisions, funnel)
    if not len(rows):
        raise NoIdentityRealised(
            f"no candidate identity was realised: none of {len(decisions.outcome)} probes "
            "gave a detectable face separated from the others (see probe_funnel.json)"
        )
    embeddings = (
        decisions.centroids[rows] if probe.condition == "probe" else candidates.embeddings[rows]
    )
    table = IdentityTable(
        candidates.ids[rows],
        embeddings.astype(np.float32),
        candidates.seeds[rows],
        f"{settings.method}+probe",
        candidates.embedder,
    )
    table.save(folder / "identities.parquet")
    return funnel


def _embed_probe_chunk(tar_path, ids, samples, embedder, workers, face_settings, filter_settings):
    """Filter-embedder vectors of a probe chunk (candidate-major, ``samples`` rows each)
    and which rows pass the filter's face rules."""
    from facefoundry.faces.embed_stage import Partition, embed_items_parallel, partition_items
    from facefoundry.filters.sample_rules import face_reasons
    from facefoundry.shards.layout import make_key

    found = {
        key: (key, who, data)
        for key, who, data in partition_items(Partition("probe", source=str(tar_path)))
    }
    items = [found[make_key(i, s)] for i in ids for s in range(samples)]
    table = embed_items_parallel(
        items,
        face_settings.detector,
        [embedder],
        workers,
        policy=face_settings.selection,
        no_face=face_settings.no_face,
        batch_size=face_settings.batch_size,
    )
    (column,) = [name for name in table.column_names if name.startswith("embedding_")]
    vectors = np.stack(table.column(column).to_numpy(zero_copy_only=False))
    reasons = face_reasons(  # the filter's own sample rules, so a probe is judged as a sample
        np.array(table.column("status").to_pylist(), dtype=object),
        vectors,
        np.array(table.column("n_faces").to_pylist()),
        np.array(table.column("det_score").to_pylist(), dtype=np.float64),
        max_faces=filter_settings.max_faces,
        min_det_score=filter_settings.min_det_score,
    )
    usable = np.array([reason is None for reason in reasons], dtype=bool)
    return vectors.astype(np.float32), usable


def _centroid_column(centroids: np.ndarray):
    """Each probe's unit centroid in the filter's space (null where the probe found no
    face): what the decisions were made on, kept so that readers (the realisation map,
    ``bench_probe_largest``) need not embed the probe images again."""
    import pyarrow as pa

    centroids = np.asarray(centroids, dtype=np.float32)
    dim = centroids.shape[1]
    found = np.isfinite(centroids).all(axis=1)
    rows = [row.tolist() if ok else None for row, ok in zip(centroids, found, strict=True)]
    return pa.array(rows, type=pa.list_(pa.float32(), dim))


def read_probe_centroids(folder: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(candidate ids, probe centroids with NaN rows where no face) from an identities
    folder's ``probes.parquet``; a one-line error for a funnel written before the
    centroids were kept (re-run its identities stage, or embed its ``probes/``)."""
    import pyarrow.parquet as pq

    path = Path(folder) / "probes.parquet"
    if not path.is_file():
        raise UsageError(f"{path}: no probe funnel here (identities.probe was off)")
    table = pq.read_table(path)
    if "centroid" not in table.column_names:
        raise ProbeCentroidsNotStored(
            f"{path} predates stored probe centroids: re-run its identities stage"
        )
    rows = table.column("centroid").to_pylist()
    dim = table.schema.field("centroid").type.list_size  # known with every probe faceless
    centroids = np.array(
        [row if row is not None else [np.nan] * dim for row in rows], dtype=np.float32
    ).reshape(len(rows), dim)
    return np.asarray(table.column("candidate").to_pylist(), dtype=np.int64), centroids


def probe_pool(folder: str | Path, recipe) -> tuple[np.ndarray, np.ndarray]:
    """(candidate ids, probe centroids, NaN rows without a face) of every probed candidate
    of an identities folder, candidate order: the centroids its funnel stored, or, for a
    funnel written before it stored them, its probe images embedded again with the
    funnel's own embedder and face rules (``recipe``: the run's; minutes at 1,000s)."""
    import pyarrow.parquet as pq

    from facefoundry.faces.settings import embed_workers

    folder = Path(folder)
    try:
        return read_probe_centroids(folder)
    except ProbeCentroidsNotStored:
        logger.info("%s: embedding its probe images again (no stored centroids)", folder)
    probe = recipe.identities.probe
    workers = embed_workers(recipe.faces, recipe.orchestration.runner, 2)
    ids, centroids = [], []
    for part in sorted((folder / "probes").glob("part-*.parquet")):
        chunk = list(dict.fromkeys(pq.read_table(part, columns=["identity"])[0].to_pylist()))
        vectors, usable = _embed_probe_chunk(
            part.with_suffix(".tar"),
            chunk,
            probe.samples,
            recipe.filter.embedder,
            workers,
            recipe.faces,
            recipe.filter,
        )
        ids += chunk
        centroids.append(probe_centroids(vectors, usable, probe.samples))
    return np.array(ids, dtype=np.int64), np.concatenate(centroids)


def _write_decisions(
    folder: Path, candidates: IdentityTable, decisions: ProbeDecisions, funnel: dict
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facefoundry.atomic import atomic_path, write_json_atomic

    n = len(decisions.outcome)
    table = pa.table(
        {
            "candidate": pa.array(candidates.ids[:n].astype(np.int64)),
            "outcome": pa.array(decisions.outcome),
            "condition_cos": pa.array(decisions.condition_cos.astype(np.float32)),
            "nearest_kept": pa.array(
                [int(candidates.ids[i]) if i >= 0 else None for i in decisions.nearest],
                type=pa.int64(),
            ),
            "nearest_kept_cos": pa.array(decisions.nearest_cos.astype(np.float32)),
            "centroid": _centroid_column(decisions.centroids[:n]),
        }
    )
    with atomic_path(folder / "probes.parquet") as partial:
        pq.write_table(table, partial)
    write_json_atomic(folder / "probe_funnel.json", funnel)
