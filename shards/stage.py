"""The shards stage: generated chunks + the filter's decisions -> the dataset.

Every candidate becomes a :class:`ShardSample` (kept ones carry their face, rejects
their reason), so the manifests account for every generated image. Reads files only
(the chunk contract of ``generators/chunks.py`` and the filter's ``decisions.parquet``):
this package still imports no other facefoundry package.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

from facefoundry.shards.sample import ShardSample
from facefoundry.shards.tarformat import iter_members

logger = logging.getLogger(__name__)


def _number(row: dict | None, key: str) -> float | None:
    if not row or row.get(key) is None:
        return None
    value = float(row[key])
    return None if math.isnan(value) else value


def _chunk_images(tar_path: Path) -> dict[str, bytes]:
    images: dict[str, bytes] = {}
    with open(tar_path, "rb") as handle:
        for member in iter_members(handle, source=str(tar_path), max_member_bytes=64 << 20):
            stem, _, suffix = member.name.rpartition(".")
            if suffix == "jpg":
                images[stem] = member.data
    return images


def shard_candidates(chunk_parquets: Sequence[Path], decisions_path: Path) -> list[ShardSample]:
    """One ShardSample per generated candidate, sorted by key."""
    import pyarrow.parquet as pq

    decisions = {row["key"]: row for row in pq.read_table(decisions_path).to_pylist()}
    samples = []
    for parquet in chunk_parquets:
        provenance = pq.read_table(parquet).to_pylist()
        images = _chunk_images(parquet.with_suffix(".tar"))
        for row in provenance:
            key = row["key"]
            decision = decisions.get(key)
            kept = bool(decision and decision["kept"])
            reason = None if kept else (decision["reject_reason"] if decision else "not_embedded")
            samples.append(
                ShardSample(
                    key=key,
                    identity=int(row["identity"]),
                    kept=kept,
                    face_jpeg=images.get(key) if kept else None,
                    reject_reason=reason or ("rejected" if not kept else None),
                    generator=row["generator"],
                    seed=int(row["seed"]),
                    prompt=row.get("prompt"),
                    det_score=_number(decision, "det_score"),
                    centroid_cos=_number(decision, "centroid_cos"),
                    metadata={
                        "model_checksum": row["model_checksum"],
                        "scheduler": row["scheduler"],
                        "steps": row["steps"],
                    },
                )
            )
    return sorted(samples, key=lambda s: s.key)


def write_shard_stage(
    chunk_parquets: Sequence[Path],
    decisions_path: Path,
    out_dir: Path,
    settings,
    recipe_hash: str,
    quality: dict | None = None,
) -> dict:
    """Write and finalize the split; an empty filter result writes no shards and says so."""
    from facefoundry.shards.finalize import finalize
    from facefoundry.shards.writer import write_split

    samples = shard_candidates(chunk_parquets, decisions_path)
    kept = sum(s.kept for s in samples)
    if kept == 0:
        logger.warning("the filter kept no samples of %d candidates: no shards", len(samples))
        return {
            "samples": len(samples),
            "kept": 0,
            "classes": 0,
            "empty": f"the filter kept none of {len(samples)} candidates",
        }
    write_split(samples, out_dir, settings=settings)
    finalize(out_dir, settings=settings, recipe_hash=recipe_hash, quality=quality)
    classes = len({s.identity for s in samples if s.kept})
    return {"samples": len(samples), "kept": kept, "classes": classes}
