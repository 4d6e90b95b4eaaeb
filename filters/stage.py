"""The filter stage at its border: embed parts in, decisions + identities + metrics files out.

``run_filter(embed_dir, out_dir, settings)`` reads ``embed/part-*.parquet``,
resolves thresholds (cosines or calibrated FMRs), applies every rule
(``filters.decide``), scores the data before and after with the judge embedder
(and the filtering one), and writes into ``out_dir``:

- ``decisions.parquet``: one row per candidate sample, rejects included (the
  shard writer's input): key, identity, kept, reject_reason, status, n_faces,
  det_score, centroid_cos, duplicate_of, duplicate_cos, nearest_real, nearest_real_cos.
- ``identities.parquet``: one row per identity with its counts, reason and scores.
- ``metrics.json``: settings, resolved thresholds, funnel, before/after metrics.

Privacy reference: ``settings.reference`` when given, else the training people recorded
in ``generator_model`` (``filters.privacy.training_reference``) at their calibrated
threshold, else none (the rule is skipped and ``metrics.json`` says why).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.atomic import atomic_path, write_text_atomic
from facefoundry.filters.calibrate import ResolvedThreshold, resolve_threshold
from facefoundry.filters.decide import FilterResult, Rules, apply_filters
from facefoundry.filters.distinct import judge_distinct
from facefoundry.filters.metrics import dataset_metrics
from facefoundry.filters.privacy import ReferenceSet, load_reference, training_reference
from facefoundry.filters.samples import (
    SampleTable,
    embedder_name,
    find_parts,
    generate_dir_beside,
    read_samples,
)
from facefoundry.filters.settings import FilterSettings

if TYPE_CHECKING:
    from facefoundry.evaluation.lfw import Lfw

logger = logging.getLogger(__name__)

DECISIONS = "decisions.parquet"
IDENTITIES = "identities.parquet"
METRICS = "metrics.json"
FORMAT_VERSION = 1


def resolve_rules(
    settings: FilterSettings, checksums: dict[str, str] | None = None
) -> tuple[Rules, dict[str, ResolvedThreshold]]:
    """Turn the settings' thresholds into cosines for the embedders that apply them."""
    checksums = checksums or {}
    name = embedder_name(settings.embedder)
    private = embedder_name(settings.privacy_model)
    resolved: dict[str, ResolvedThreshold] = {}
    for field, model in (
        ("min_centroid_cos", name),
        ("tau_priv", private),
        ("tau_inter", name),
    ):
        threshold = getattr(settings, field)
        if threshold is not None:
            resolved[field] = resolve_threshold(
                threshold, model, checksums.get(model), settings.calibration
            )
    rules = Rules(
        embedder=name,
        max_faces=settings.max_faces,
        min_det_score=settings.min_det_score,
        min_centroid_cos=resolved["min_centroid_cos"].cos
        if "min_centroid_cos" in resolved
        else None,
        centroid_quantile=settings.centroid_quantile,
        min_samples=settings.min_samples,
        tau_priv=resolved["tau_priv"].cos if "tau_priv" in resolved else None,
        privacy_embedder=private,
        tau_inter=resolved["tau_inter"].cos if "tau_inter" in resolved else None,
        dedup=settings.dedup,
    )
    return rules, resolved


def _nullable(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, dtype=np.float64)
    return pa.array(values, mask=~np.isfinite(values), type=pa.float64())


def _identity_array(values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
    values = np.asarray(values)
    if values.dtype.kind in "iu":
        return pa.array(values.astype(np.int64), mask=mask, type=pa.int64())
    return pa.array([str(v) for v in values], mask=mask, type=pa.string())


def decisions_table(table: SampleTable, result: FilterResult) -> pa.Table:
    """One row per candidate sample with its decision and scores (nullable floats)."""
    ids = result.identities
    groups = table.groups
    partner = ids.duplicate_of[groups]
    partner_ids = table.group_ids[np.maximum(partner, 0)]
    return pa.table(
        {
            "key": pa.array(table.keys.tolist(), type=pa.string()),
            "identity": _identity_array(table.identities),
            "kept": pa.array(result.kept, type=pa.bool_()),
            "reject_reason": pa.array(result.reason.tolist(), type=pa.string()),
            "status": pa.array(table.status.tolist(), type=pa.string()),
            "n_faces": pa.array(table.n_faces, type=pa.int32()),
            "det_score": _nullable(table.det_score),
            "centroid_cos": _nullable(result.centroid_cos),
            "duplicate_of": _identity_array(partner_ids, mask=partner < 0),
            "duplicate_cos": _nullable(ids.duplicate_cos[groups]),
            "nearest_real": pa.array(ids.nearest_real[groups].tolist(), type=pa.string()),
            "nearest_real_cos": _nullable(ids.nearest_real_cos[groups]),
        }
    )


def identities_table(table: SampleTable, result: FilterResult) -> pa.Table:
    """One row per identity: counts after each stage, its reason and scores."""
    ids = result.identities
    partner = ids.duplicate_of
    return pa.table(
        {
            "identity": _identity_array(table.group_ids),
            "kept": pa.array([r is None for r in ids.reason.tolist()], type=pa.bool_()),
            "reject_reason": pa.array(ids.reason.tolist(), type=pa.string()),
            "n_candidates": pa.array(ids.n_candidates, type=pa.int64()),
            "n_after_sample_rules": pa.array(ids.n_after_sample_rules, type=pa.int64()),
            "n_kept": pa.array(ids.n_kept, type=pa.int64()),
            "centroid_consistency": _nullable(ids.centroid_consistency),
            "pair_consistency": _nullable(ids.pair_consistency),
            "duplicate_of": _identity_array(
                table.group_ids[np.maximum(partner, 0)], mask=partner < 0
            ),
            "duplicate_cos": _nullable(ids.duplicate_cos),
            "nearest_real": pa.array(ids.nearest_real.tolist(), type=pa.string()),
            "nearest_real_cos": _nullable(ids.nearest_real_cos),
        }
    )


def _write_parquet(table: pa.Table, path: Path) -> Path:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 16)
    return path


def _write_json(document: dict, path: Path) -> Path:
    text = json.dumps(document, indent=2, allow_nan=False, default=_jsonable) + "\n"
    write_text_atomic(path, text)
    return path


def _jsonable(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value)}")


def _finite(document: object) -> object:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(document, dict):
        return {k: _finite(v) for k, v in document.items()}
    if isinstance(document, (list, tuple)):
        return [_finite(v) for v in document]
    if isinstance(document, (float, np.floating)):
        return float(document) if np.isfinite(document) else None
    return document


def metric_radius(settings: FilterSettings, embedder: str, checksum: str | None) -> dict:
    """DCFace radius r (cosine distance) for one embedder, from ``settings.metric_threshold``."""
    resolved = resolve_threshold(
        settings.metric_threshold, embedder, checksum, settings.calibration
    )
    return {"distance": 1.0 - resolved.cos, "threshold": resolved.model_dump()}


def before_after_metrics(
    vectors: np.ndarray,
    groups: np.ndarray,
    kept: np.ndarray | None,
    settings: FilterSettings,
    radius: float,
    *,
    backend: str = "auto",
) -> dict:
    """Metrics of all candidates (``before``) and, given ``kept``, of the kept samples (``after``)."""
    options = {
        "radius": radius,
        "impostor_pairs_n": settings.impostor_pairs,
        "genuine_pairs_max": settings.genuine_pairs,
        "seed": settings.seed,
        "block": settings.block_size,
        "backend": backend,
    }
    out = {"before": dataset_metrics(vectors, groups, **options)}
    if kept is not None:
        out["after"] = dataset_metrics(vectors, np.where(kept, groups, -1), **options)
    return out


def _check_weights(reference: ReferenceSet, checksums: dict[str, str], what: str) -> None:
    checksum = checksums.get(reference.embedder)
    if reference.checksum and checksum and reference.checksum != checksum:
        raise ValueError(
            f"{what} was embedded with other {reference.embedder} weights than the samples; "
            "re-embed it with the same model"
        )


def privacy_reference(
    settings: FilterSettings,
    checksums: dict[str, str],
    generator_model: str | Path | None = None,
    lfw: Lfw | str | Path | None = None,
    progress: bool = False,
) -> tuple[ReferenceSet | None, ResolvedThreshold | None, str, dict | None]:
    """The privacy rule's reference set: (reference, calibrated tau or None, note, summary).

    The calibrated tau (a ``ResolvedThreshold``) replaces ``tau_priv`` when the reference
    is the generator's training people; ``summary`` describes that calibration.
    """
    name = embedder_name(settings.privacy_model)
    if settings.tau_priv is None:
        return None, None, "off (tau_priv is null)", None
    if settings.reference_off:
        return None, None, "off (reference: none)", None
    if settings.reference:
        reference = load_reference(settings.reference, name, settings.privacy_against)
        _check_weights(reference, checksums, f"reference {settings.reference}")
        note = f"{len(reference)} reference {reference.against} from {settings.reference}"
        return reference, None, note, None
    from facefoundry.evaluation.lfw import LfwNotFoundError

    try:
        trained = training_reference(
            generator_model, settings.privacy_model, lfw=lfw, progress=progress
        )
    except LfwNotFoundError as error:
        logger.warning("privacy filter skipped: %s", error)
        note = (
            f"skipped: {generator_model} was trained on LFW people but LFW is not found "
            "(set FACEFOUNDRY_DATA_DIR or give settings.reference)"
        )
        return None, None, note, None
    if trained is None:
        logger.warning("privacy filter skipped: no reference set given")
        note = "skipped: no reference set (settings.reference)"
        if generator_model:
            note += f"; {generator_model} records no LFW training set"
        return None, None, note, None
    if settings.privacy_against != "centroids":
        logger.warning("the training people are compared by centroid (privacy_against ignored)")
    _check_weights(trained.reference, checksums, f"the training people of {generator_model}")
    tau = ResolvedThreshold(
        cos=trained.tau,
        embedder=name,
        fmr=None,
        source=f"leak calibration: {100 * trained.leak.quantile:g}th percentile of unseen "
        f"{trained.leak.unseen_people} people's nearest-training-person cosine",
    )
    summary = {"model": str(generator_model), "record": trained.record.model_dump(mode="json")}
    summary |= trained.leak.summary()
    return trained.reference, tau, trained.note(), summary


def run_filter(
    embed_dir: str | Path,
    out_dir: str | Path,
    settings: FilterSettings | None = None,
    *,
    generate_dir: str | Path | None = None,
    generator_model: str | Path | None = None,
    lfw: Lfw | str | Path | None = None,
    progress: bool = False,
) -> Path:
    """Filter the candidates under ``embed_dir``; write decisions, identities and metrics to ``out_dir``.

    ``embed_dir``: a run directory (with ``embed/``), the embed folder, or one parquet
    file; ``generate_dir``: the chunks that name each sample's identity (default: the
    run's ``generate/`` beside ``embed_dir``); ``generator_model``: the generator's model
    folder, whose recorded training people are the privacy reference when
    ``settings.reference`` is not given (``lfw``: where LFW is, default
    ``$FACEFOUNDRY_DATA_DIR/lfw``). Returns ``out_dir``. Nothing in ``out_dir`` is
    replaced until its new content is complete (each file is written beside and renamed).
    """
    settings = settings or FilterSettings()
    started = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    filter_name = embedder_name(settings.embedder)
    judge_name = embedder_name(settings.judge_embedder)
    privacy_name = embedder_name(settings.privacy_model)
    wanted = list(dict.fromkeys([filter_name, privacy_name, judge_name]))
    table = read_samples(embed_dir, wanted, generate_dir)
    for name in wanted:
        table.vectors(name)  # fail now, with advice, if an embedder's column is missing
    timings["read_s"] = time.perf_counter() - started

    rules, resolved = resolve_rules(settings, table.checksums)
    mark = time.perf_counter()
    reference, calibrated, privacy_note, training = privacy_reference(
        settings, table.checksums, generator_model, lfw, progress
    )
    if calibrated is not None:
        rules = dataclasses.replace(rules, tau_priv=calibrated.cos)
        resolved["tau_priv"] = calibrated
    timings["reference_s"] = time.perf_counter() - mark
    mark = time.perf_counter()
    result = apply_filters(
        table,
        rules,
        reference,
        block=settings.block_size,
        backend=settings.search_backend,
        screen=settings.screen,
        progress=progress,
    )
    timings["filter_s"] = time.perf_counter() - mark
    _write_parquet(decisions_table(table, result), out_dir / DECISIONS)
    _write_parquet(identities_table(table, result), out_dir / IDENTITIES)

    mark = time.perf_counter()
    scored = {"judge": judge_name}
    if settings.metrics_with_filter_embedder:
        scored["filter"] = filter_name
    metrics = {}
    for role, name in scored.items():
        radius = metric_radius(settings, name, table.checksums.get(name))
        figures = before_after_metrics(
            table.vectors(name),
            table.groups,
            result.kept,
            settings,
            radius["distance"],
            backend=settings.search_backend,
        )
        metrics[role] = {"embedder": name, "radius": radius} | figures
    if judge_name == filter_name:
        distinct = {"judge": judge_name, "skipped": "the judge is the filter's embedder"}
    elif rules.tau_inter is None:
        distinct = {"judge": judge_name, "skipped": "no de-duplication (tau_inter: null)"}
    else:
        distinct = judge_distinct(
            table,
            result.kept,
            judge_name,
            resolved["tau_inter"].fmr,
            settings.calibration,
        )
    timings["metrics_s"] = time.perf_counter() - mark
    timings["total_s"] = time.perf_counter() - started

    document = {
        "format_version": FORMAT_VERSION,
        "inputs": {
            "path": str(embed_dir),
            "parts": len(find_parts(embed_dir)),
            "samples": len(table),
            "identities": table.n_groups,
            "checksums": table.checksums,
        },
        "embedders": {"filter": filter_name, "judge": judge_name, "privacy": privacy_name},
        "judge_independent": judge_name != filter_name,
        "settings": settings.model_dump(mode="json"),
        "thresholds": {k: v.model_dump() for k, v in resolved.items()},
        "rules": {
            "max_faces": rules.max_faces,
            "min_det_score": rules.min_det_score,
            "centroid_quantile": rules.centroid_quantile,
            "min_samples": rules.min_samples,
            "dedup": rules.dedup,
            "privacy": privacy_note,
        },
        **({"privacy_reference": training} if training else {}),
        "funnel": result.funnel,
        "metrics": metrics,
        "judge_distinct": distinct,
        "timings": timings,
    }
    _write_json(_finite(document), out_dir / METRICS)
    logger.info("filter stage done in %.1f s: %s", timings["total_s"], out_dir)
    return out_dir


def compute_metrics(
    path: str | Path,
    embedder: str = "dlib",
    settings: FilterSettings | None = None,
    *,
    decisions: str | Path | None = None,
    workers: int = 0,
) -> dict:
    """Quality metrics of a run / embed folder with one embedder; before/after if decisions exist.

    ``decisions``: a decisions parquet (default: ``filter/decisions.parquet`` of the
    run directory when present). ``workers > 0`` reads the parts on a Dask cluster.
    """
    settings = settings or FilterSettings(judge_embedder=embedder, allow_same_judge=True)
    name = embedder_name(embedder)
    path = Path(path)
    parts = find_parts(path)
    if workers > 0:
        from facefoundry.filters.samples import read_parts_distributed

        table = read_parts_distributed(
            parts, [name], workers=workers, generate_dir=generate_dir_beside(path)
        )
    else:
        table = read_samples(path, [name])
    vectors = table.vectors(name)
    if decisions is None:
        for candidate in (path / "filter" / DECISIONS, path.parent / "filter" / DECISIONS):
            if candidate.is_file():
                decisions = candidate
                break
    kept = None
    if decisions is not None:
        chosen = pq.read_table(decisions, columns=["key", "kept"])
        lookup = dict(zip(chosen["key"].to_pylist(), chosen["kept"].to_pylist(), strict=True))
        kept = np.array([bool(lookup.get(k, False)) for k in table.keys.tolist()])
    radius = metric_radius(settings, name, table.checksums.get(name))
    figures = before_after_metrics(
        vectors, table.groups, kept, settings, radius["distance"], backend=settings.search_backend
    )
    document = {
        "embedder": name,
        "path": str(path),
        "decisions": str(decisions) if decisions else None,
        "radius": radius,
    } | figures
    return _finite(document)
