"""Summary numbers of a shard directory, for people (``facefoundry shards stats``)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from .atomic import read_json
from .layout import DATASET_JSON, complete_shard_stems, parse_shard_name, stats_path


def dataset_stats(directory: Path | str) -> dict[str, Any]:
    """Counts per split from the shards' stats files, plus dataset.json's figures if finalized.

    Works on unfinished directories too (``finalized`` is then False), so it
    can show a run's progress.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a directory")
    splits: dict[str, dict[str, Any]] = {}
    for stem in complete_shard_stems(directory):
        split, _ = parse_shard_name(stem)  # type: ignore[misc]
        stats = read_json(stats_path(directory, stem))
        doc = splits.setdefault(
            split,
            {"shards": 0, "samples": 0, "rows": 0, "rejected": 0, "tar_bytes": 0, "reasons": {}},
        )
        doc["shards"] += 1
        doc["samples"] += stats["n_kept"]
        doc["rows"] += stats["n_rows"]
        doc["rejected"] += stats["n_rejected"]
        doc["tar_bytes"] += stats["tar_bytes"]
        doc["reasons"] = dict(Counter(doc["reasons"]) + Counter(stats["reject_reasons"]))
    result: dict[str, Any] = {"directory": str(directory), "splits": splits, "finalized": False}
    dataset_file = directory / DATASET_JSON
    if dataset_file.exists():
        dataset = read_json(dataset_file)
        result.update(
            finalized=True,
            class_count=dataset["class_count"],
            quality=dataset["quality"],
            recipe_hash=dataset.get("recipe_hash"),
        )
    return result


def format_stats(stats: dict[str, Any]) -> str:
    """Plain-text rendering of ``dataset_stats``."""
    lines = [f"{stats['directory']} ({'finalized' if stats['finalized'] else 'NOT finalized'})"]
    if "class_count" in stats:
        lines.append(f"classes: {stats['class_count']}")
    for split, doc in sorted(stats["splits"].items()):
        per = doc["tar_bytes"] / doc["samples"] if doc["samples"] else 0.0
        lines.append(
            f"{split}: {doc['shards']} shards, {doc['samples']} samples kept of {doc['rows']} "
            f"({doc['rejected']} rejected), {doc['tar_bytes'] / 1e6:.1f} MB, "
            f"{per / 1e3:.1f} kB/sample"
        )
        for reason, n in sorted(doc["reasons"].items(), key=lambda kv: -kv[1]):
            lines.append(f"  rejected {reason}: {n}")
    quality = stats.get("quality")
    if quality:
        lines.append(f"keep rate: {quality['keep_rate']:.3f}")
        for name in ("samples_per_class", "det_score", "centroid_cos"):
            q = quality[name]
            if q.get("mean") is not None:
                lines.append(
                    f"{name}: mean {q['mean']:.3f} min {q['min']:.3f} "
                    f"median {q['median']:.3f} max {q['max']:.3f}"
                )
    if not stats["splits"]:
        lines.append("no complete shards")
    return "\n".join(lines)
