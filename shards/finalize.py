"""Finalize: after all writers are done, check completeness and labels, write dataset files.

Reads every block marker and shard stats file, refuses (``FinalizeError``,
listing every problem) when a block is incomplete, a shard is partial or
leftover temporary files exist, then:

1. checks, without rewriting anything, that the labels the writers wrote
   (``{key}.cls`` and the manifests' ``label`` column) are the label map of
   the identities with at least one kept sample, over all splits: ascending
   identity id -> 0..C-1 (``labels.label_map``);
2. writes ``labels.json``, ``sizes.json``, ``{split}.index.json`` and
   finally ``dataset.json``, the dataset's completion marker.

Running it again on the same shards gives the same bytes.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .atomic import read_json, write_json_atomic
from .errors import EmptyDatasetError, FinalizeError
from .layout import (
    BLOCKS_DIR,
    DATASET_JSON,
    LABELS_JSON,
    SIZES_JSON,
    block_marker_path,
    complete_shard_stems,
    index_path,
    manifest_path,
    parse_shard_name,
    stats_path,
    tar_path,
    temporary_files,
)
from .manifest import read_manifest
from .settings import ShardSettings
from .widsindex import write_index
from .writer import FORMAT_VERSION

logger = logging.getLogger(__name__)

KEY_SCHEME = "{identity:07d}_{sample:04d} (shards.make_key); keys are unique, without dots"
MEMBERS = {
    "cls": "class label 0..C-1, ASCII decimal (labels.json's index of the identity)",
    "jpg": "aligned face, JPEG, RGB, face_size x face_size pixels",
    "id": "identity id, ASCII decimal",
    "json": "provenance and scores (identity, generator, seed, prompt, det_score, "
    "centroid_cos, metadata)",
    "full.png | full.jpg": "optional full generated image",
}
_VERSIONED = ("facefoundry", "webdataset", "wids", "pyarrow", "numpy", "pillow", "pydantic")


def package_versions() -> dict[str, str | None]:
    """Versions of Python and the packages that shape the bytes."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def collect_shards(
    directory: Path,
    settings: ShardSettings,
    expected_blocks: Mapping[str, Iterable[int]] | None = None,
) -> tuple[dict[str, list[dict[str, Any]]], list[str]]:
    """Stats of every shard per split, from the block markers, and the problems found."""
    problems: list[str] = []
    for tmp in temporary_files(directory):
        problems.append(f"{tmp}: leftover temporary file of an interrupted writer; re-run it")
    splits: dict[str, list[dict[str, Any]]] = {}
    listed: set[str] = set()
    for marker_file in sorted((directory / BLOCKS_DIR).glob("*.json")):
        marker = read_json(marker_file)
        split = marker["split"]
        if split not in settings.splits:
            problems.append(f"{marker_file}: split {split!r} is not in settings.splits")
            continue
        if marker.get("layout_hash") != settings.layout_hash():
            problems.append(f"{marker_file}: written with other layout settings")
        for stem in marker["shards"]:
            listed.add(stem)
            stats_file = stats_path(directory, stem)
            if not stats_file.exists():
                problems.append(f"{stem}: listed by {marker_file.name} but has no stats file")
                continue
            stats = read_json(stats_file)
            if stats.get("format_version") != FORMAT_VERSION:
                problems.append(
                    f"{stem}: written by shard format version {stats.get('format_version')}, "
                    f"not {FORMAT_VERSION} (labels in the tars); rewrite the shards"
                )
            for path in (tar_path(directory, stem), manifest_path(directory, stem)):
                if not path.exists():
                    problems.append(f"{path}: missing")
            if tar_path(directory, stem).exists():
                size = tar_path(directory, stem).stat().st_size
                if size != stats["tar_bytes"]:
                    problems.append(f"{stem}.tar: {size} bytes, stats say {stats['tar_bytes']}")
            splits.setdefault(split, []).append(stats)
    for stem in complete_shard_stems(directory):
        if stem not in listed:
            split, number = parse_shard_name(stem)  # type: ignore[misc]
            block = number // settings.shards_per_block
            problems.append(
                f"{stem}: block {block} of split {split!r} has no done marker (its writer did not "
                "finish); re-run write_block for it"
            )
    for path in sorted(directory.glob("*.tar")):
        parsed = parse_shard_name(path.stem)
        if parsed is not None and not stats_path(directory, path.stem).exists():
            problems.append(f"{path.name}: partial shard without stats; re-run its writer")
    for split, blocks in (expected_blocks or {}).items():
        for block in blocks:
            if not block_marker_path(directory, split, block).exists():
                problems.append(f"block {block} of split {split!r} was expected but is not done")
    for stats_list in splits.values():
        stats_list.sort(key=lambda s: s["shard"])
    return splits, problems


def infer_settings(directory: Path) -> ShardSettings:
    """Settings with the layout the shards were written with and the splits found on disk."""
    markers = sorted((directory / BLOCKS_DIR).glob("*.json"))
    stems = complete_shard_stems(directory)
    if not markers or not stems:
        raise EmptyDatasetError(f"{directory} holds no shards: write some before finalize")
    splits = sorted({read_json(m)["split"] for m in markers})
    layout = read_json(stats_path(directory, stems[0]))["layout"]
    return ShardSettings(splits=tuple(splits), **layout)


def _summary(values: np.ndarray) -> dict[str, float | None]:
    if values.size == 0:
        return {"mean": None, "min": None, "p05": None, "median": None, "max": None}
    return {
        "mean": round(float(values.mean()), 6),
        "min": round(float(values.min()), 6),
        "p05": round(float(np.percentile(values, 5)), 6),
        "median": round(float(np.median(values)), 6),
        "max": round(float(values.max()), 6),
    }


def _kept_values(tables: list[pa.Table], column: str) -> np.ndarray:
    parts = []
    for table in tables:
        col = table.filter(table["kept"])[column].drop_null()
        parts.append(col.to_numpy())
    return np.concatenate(parts) if parts else np.array([], dtype=np.float64)


def _label_problems(
    splits: Mapping[str, list[dict[str, Any]]],
    tables: Mapping[str, list[pa.Table]],
    identities: pa.Array,
) -> list[str]:
    """Shards whose written labels are not the label map of all kept identities."""
    problems = []
    for split, stats in splits.items():
        for s, table in zip(stats, tables[split], strict=True):
            expected = pc.index_in(table["identity"], value_set=identities).cast(pa.int32())
            written = table["label"].cast(pa.int32())
            if written.equals(expected):
                continue
            differs = pc.invert(pc.fill_null(pc.equal(written, expected), False))
            both_null = pc.and_(pc.is_null(written), pc.is_null(expected))
            bad = table.filter(pc.and_(differs, pc.invert(both_null)))
            row = bad.slice(0, 1).to_pylist()[0]
            want = pc.index_in(pa.array([row["identity"]]), value_set=identities)[0].as_py()
            problems.append(
                f"{s['shard']}: {bad.num_rows} row(s) with labels other than the label map of "
                f"all kept identities (sorted ids -> 0..{len(identities) - 1}), e.g. "
                f"{row['key']} (identity {row['identity']}) has {row['label']}, expected {want}; "
                "the writers had different label maps or not every kept identity: rewrite with "
                "labels=shards.label_map(kept identity ids of every split)"
            )
    return problems


def finalize(
    directory: Path | str,
    *,
    settings: ShardSettings | None = None,
    recipe_hash: str | None = None,
    quality: Mapping[str, Any] | None = None,
    expected_blocks: Mapping[str, Iterable[int]] | None = None,
) -> Path:
    """Write the dataset-level files of a shard directory; returns the dataset.json path.

    ``recipe_hash`` (the hash of the resolved recipe) and ``quality`` (e.g.
    the filter's metrics) are recorded as given. ``expected_blocks`` maps a
    split to the blocks that must be done (a writer that never started leaves
    no trace otherwise). Raises ``FinalizeError`` listing every problem, and
    ``EmptyDatasetError`` when there are no kept samples.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    settings = settings or infer_settings(directory)
    splits, problems = collect_shards(directory, settings, expected_blocks)
    if problems:
        raise FinalizeError(problems)
    if not splits:
        raise EmptyDatasetError(f"{directory} holds no shards: write some before finalize")

    columns = ["key", "identity", "label", "kept", "det_score", "centroid_cos"]
    tables = {
        split: [read_manifest(manifest_path(directory, s["shard"]), columns) for s in stats]
        for split, stats in splits.items()
    }
    all_tables = [t for ts in tables.values() for t in ts]
    keys = pa.chunked_array([t["key"] for t in all_tables])
    counts = pc.value_counts(keys)
    dupes = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dupes):
        shown = [d["values"].as_py() for d in dupes[:10]]
        raise FinalizeError([f"{len(dupes)} key(s) appear more than once, e.g. {shown}"])
    for split, stats in splits.items():
        if sum(s["n_kept"] for s in stats) == 0:
            problems.append(f"split {split!r} has no kept samples")
    if problems:
        raise FinalizeError(problems)

    kept_ids = pa.chunked_array([t.filter(t["kept"])["identity"] for t in all_tables])
    identities = pc.unique(kept_ids).sort()
    class_count = len(identities)
    if class_count == 0:
        raise EmptyDatasetError(f"{directory}: no kept samples in any split")

    problems = _label_problems(splits, tables, identities)
    if problems:
        raise FinalizeError(problems)

    per_class = Counter(kept_ids.to_pylist())
    class_sizes = np.array(sorted(per_class.values()), dtype=np.float64)
    det = _kept_values(all_tables, "det_score")
    cos = _kept_values(all_tables, "centroid_cos")
    reasons: Counter[str] = Counter()
    split_docs: dict[str, Any] = {}
    for split, stats in splits.items():
        split_reasons: Counter[str] = Counter()
        for s in stats:
            split_reasons.update(s["reject_reasons"])
        reasons.update(split_reasons)
        kept_split = pa.chunked_array([t.filter(t["kept"])["identity"] for t in tables[split]])
        split_docs[split] = {
            "shards": [s["shard"] for s in stats],
            "index": index_path(directory, split).name,
            "n_samples": sum(s["n_kept"] for s in stats),
            "n_rows": sum(s["n_rows"] for s in stats),
            "n_rejected": sum(s["n_rejected"] for s in stats),
            "n_identities": len(pc.unique(kept_split)),
            "tar_bytes": sum(s["tar_bytes"] for s in stats),
            "reject_reasons": dict(sorted(split_reasons.items())),
        }
        write_index(directory, split, stats, fsync=settings.fsync)

    n_rows = sum(d["n_rows"] for d in split_docs.values())
    n_kept = sum(d["n_samples"] for d in split_docs.values())
    write_json_atomic(
        directory / LABELS_JSON,
        {"class_count": class_count, "identity_of_label": identities.to_pylist()},
        fsync=settings.fsync,
    )
    sizes = {f"{s['shard']}.tar": s["n_kept"] for stats in splits.values() for s in stats}
    write_json_atomic(directory / SIZES_JSON, dict(sorted(sizes.items())), fsync=settings.fsync)
    dataset = {
        "format": "facefoundry-shards",
        "format_version": FORMAT_VERSION,
        "recipe_hash": recipe_hash,
        "versions": package_versions(),
        "settings": settings.model_dump(mode="json"),
        "key_scheme": KEY_SCHEME,
        "members": MEMBERS,
        "class_count": class_count,
        "labels": LABELS_JSON,
        "sizes": SIZES_JSON,
        "splits": split_docs,
        "counts": {
            "n_rows": n_rows,
            "n_samples": n_kept,
            "n_rejected": n_rows - n_kept,
            "n_classes": class_count,
            "reject_reasons": dict(sorted(reasons.items())),
        },
        "quality": {
            "keep_rate": round(n_kept / n_rows, 6),
            "samples_per_class": _summary(class_sizes),
            "det_score": _summary(det),
            "centroid_cos": _summary(cos),
            "upstream": dict(quality or {}),
        },
    }
    path = write_json_atomic(directory / DATASET_JSON, dataset, fsync=settings.fsync)
    logger.info(
        "finalized %s: %d samples, %d classes, %d shards",
        directory,
        n_kept,
        class_count,
        len(sizes),
    )
    return path
