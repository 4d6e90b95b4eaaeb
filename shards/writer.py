"""Write samples into shards: ``{split}-{NNNNNN}.tar`` + ``.parquet`` + ``_stats.json``.

Per shard the tar and the manifest are written under temporary names, fsynced
and renamed; the stats file is written last and is the shard's completion
marker. On a re-run a shard with a valid stats file is skipped (its input is
still consumed and checked against the stats: row count, kept count, first
and last key, tar size), every other shard is written again from scratch.

Samples must come in strictly ascending key order within a block and in
non-decreasing identity order; both give a deterministic member order and
shard boundaries that depend only on the samples, so the bytes do not depend
on how many writers there were or whether a run was interrupted.

Every kept sample carries its class label as ``{key}.cls`` from the first
write: labels come from one map, sorted kept identity ids -> 0..C-1
(``labels.label_map``), that ``write_split`` builds from its samples or is
given, and that every ``write_block`` of a dataset is given.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .atomic import (
    fsync_dir,
    read_json,
    remove_stale_tmp,
    tmp_path_for,
    write_json_atomic,
)
from .errors import EmptyDatasetError, ResumeMismatchError, SampleOrderError
from .images import image_ext, jpeg_size
from .labels import LabelDigest, assign_labels, block_labels, check_label_map
from .layout import (
    BLOCKS_DIR,
    block_identity_range,
    block_marker_path,
    block_of,
    block_shard_numbers,
    manifest_path,
    shard_name,
    stats_path,
    tar_path,
)
from .manifest import ManifestWriter
from .sample import ShardSample
from .settings import ShardSettings
from .tarformat import archive_end, encode_members, member_bytes

logger = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: kept samples carry {key}.cls; labels are written by the writers
_WRITE_BUFFER = 1 << 20


@dataclass(frozen=True)
class BlockResult:
    """What one block writer produced: its shard stems, which were written or skipped."""

    split: str
    block: int
    shards: tuple[str, ...]
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    n_rows: int
    n_kept: int


@dataclass(frozen=True)
class SplitResult:
    """What ``write_split`` produced, block by block."""

    split: str
    blocks: tuple[BlockResult, ...]

    @property
    def shards(self) -> tuple[str, ...]:
        return tuple(s for b in self.blocks for s in b.shards)

    @property
    def written(self) -> tuple[str, ...]:
        return tuple(s for b in self.blocks for s in b.written)

    @property
    def skipped(self) -> tuple[str, ...]:
        return tuple(s for b in self.blocks for s in b.skipped)

    @property
    def n_rows(self) -> int:
        return sum(b.n_rows for b in self.blocks)

    @property
    def n_kept(self) -> int:
        return sum(b.n_kept for b in self.blocks)


class EncodedSample(NamedTuple):
    """A kept sample as tar members, its size in the tar, its JSON member and full-image type."""

    members: list[tuple[bytes, bytes]]
    nbytes: int
    json_data: bytes
    full_ext: str | None


def sample_json(sample: ShardSample) -> bytes:
    """The ``{key}.json`` member: provenance and scores, compact JSON with sorted keys."""
    obj = {
        "identity": sample.identity,
        "generator": sample.generator,
        "seed": sample.seed,
        "prompt": sample.prompt,
        "det_score": sample.det_score,
        "centroid_cos": sample.centroid_cos,
        "metadata": dict(sample.metadata),
    }
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{sample.key}: metadata is not JSON-serialisable: {exc}") from exc
    return text.encode("utf-8")


def encode_sample(
    sample: ShardSample, settings: ShardSettings, label: int | None = None
) -> EncodedSample:
    """Tar members ``(name, data)`` of a kept sample in their fixed order: cls, full.*, id, jpg, json.

    ``label`` is the sample's class label (the writers always give it);
    without it there is no ``cls`` member. Checks the face (JPEG,
    ``face_size`` square, 3 channels) and payload sizes.
    """
    key = sample.key
    face = sample.face_jpeg
    assert face is not None
    limit = settings.max_member_bytes
    if len(face) > limit:
        raise ValueError(f"{key}: face JPEG of {len(face)} bytes exceeds max_member_bytes={limit}")
    try:
        width, height, channels = jpeg_size(face)
    except ValueError as exc:
        raise ValueError(f"{key}: face_jpeg: {exc}") from exc
    size = settings.face_size
    if width != size or height != size or channels != 3:
        raise ValueError(
            f"{key}: face JPEG is {width}x{height} with {channels} channel(s); "
            f"expected {size}x{size} RGB (settings.face_size)"
        )
    json_data = sample_json(sample)
    members: list[tuple[bytes, bytes]] = []
    if label is not None:
        if isinstance(label, bool) or not isinstance(label, int) or label < 0:
            raise ValueError(f"{key}: label must be an int >= 0, got {label!r}")
        members.append((f"{key}.cls".encode(), str(label).encode()))
    full_ext = None
    if sample.full_image is not None:
        full = sample.full_image
        if len(full) > limit:
            raise ValueError(f"{key}: full image of {len(full)} bytes exceeds max_member_bytes")
        full_ext = image_ext(full)
        members.append((f"{key}.full.{full_ext}".encode(), full))
    members.append((f"{key}.id".encode(), str(sample.identity).encode()))
    members.append((f"{key}.jpg".encode(), face))
    members.append((f"{key}.json".encode(), json_data))
    nbytes = sum(member_bytes(len(data)) for _, data in members)
    return EncodedSample(members, nbytes, json_data, full_ext)


def _sha(data: bytes | None) -> str | None:
    return None if data is None else hashlib.sha256(data).hexdigest()


def _complete_stats(directory: Path, stem: str, settings: ShardSettings) -> dict[str, Any] | None:
    """The stats of a complete, intact shard, or None when it must be (re)written."""
    path = stats_path(directory, stem)
    if not path.exists():
        return None
    try:
        stats = read_json(path)
    except (OSError, ValueError):
        logger.warning("%s: unreadable stats file; rewriting the shard", path)
        return None
    if stats.get("format_version") != FORMAT_VERSION:
        raise ResumeMismatchError(
            f"{path} was written by shard format version {stats.get('format_version')}, this "
            f"writer writes version {FORMAT_VERSION} (labels in the tars as .cls); write to a "
            "new directory"
        )
    if stats.get("layout_hash") != settings.layout_hash():
        raise ResumeMismatchError(
            f"{path} was written with other layout settings ({stats.get('layout')}) than "
            f"the current ones ({settings.layout()}); write to a new directory or use the "
            "old settings"
        )
    tar = tar_path(directory, stem)
    if not tar.exists() or tar.stat().st_size != stats.get("tar_bytes"):
        logger.warning("%s: tar missing or of the wrong size; rewriting the shard", tar)
        return None
    if not manifest_path(directory, stem).exists():
        logger.warning("%s: manifest missing; rewriting the shard", stem)
        return None
    return stats


class _ShardOutput:
    """One shard being written (or, when already complete, re-counted and checked)."""

    def __init__(
        self, directory: Path, split: str, block: int, number: int, settings: ShardSettings
    ) -> None:
        self.directory = directory
        self.split = split
        self.block = block
        self.settings = settings
        self.stem = shard_name(split, number)
        self.previous = _complete_stats(directory, self.stem, settings)
        self.write = self.previous is None
        self.n_rows = 0
        self.n_kept = 0
        self.n_identities = 0
        self.offset = 0
        self.first_key: str | None = None
        self.last_key: str | None = None
        self._last_kept_identity = -1
        self.reasons: Counter[str] = Counter()
        self.labels = LabelDigest()
        self._tar_final = tar_path(directory, self.stem)
        self._man_final = manifest_path(directory, self.stem)
        for final in (self._tar_final, self._man_final, stats_path(directory, self.stem)):
            remove_stale_tmp(final)
        if self.write:
            stats_path(directory, self.stem).unlink(missing_ok=True)
            self._tar_tmp = tmp_path_for(self._tar_final)
            self._man_tmp = tmp_path_for(self._man_final)
            self._tar = open(self._tar_tmp, "wb", buffering=_WRITE_BUFFER)
            self._man_file = open(self._man_tmp, "wb")
            self._manifest = ManifestWriter(self._man_file)
            self._sha = hashlib.sha256()

    def add(self, sample: ShardSample, enc: EncodedSample | None, label: int | None) -> None:
        key = sample.key
        if self.first_key is None:
            self.first_key = key
        self.last_key = key
        self.n_rows += 1
        if enc is not None:
            self.n_kept += 1
            self.offset += enc.nbytes
            if sample.identity != self._last_kept_identity:
                self.n_identities += 1
                self._last_kept_identity = sample.identity
        else:
            self.reasons[sample.reject_reason or ""] += 1
        self.labels.add(label)
        if not self.write:
            return
        face = sample.face_jpeg
        if enc is not None:
            blob = encode_members(enc.members)
            self._tar.write(blob)
            self._sha.update(blob)
            full = sample.full_image
            json_sha, json_bytes = _sha(enc.json_data), len(enc.json_data)
        else:
            full = None
            json_sha, json_bytes = None, None
        self._manifest.add(
            key,
            self.split,
            self.stem,
            self.block,
            sample.identity,
            label,
            sample.kept,
            sample.reject_reason,
            sample.generator,
            sample.seed,
            sample.prompt,
            sample.det_score,
            sample.centroid_cos,
            _sha(face),
            None if face is None else len(face),
            _sha(full),
            None if full is None else len(full),
            enc.full_ext if enc is not None else None,
            json_sha,
            json_bytes,
        )

    def _stats(self, tar_bytes: int, tar_sha256: str) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "shard": self.stem,
            "split": self.split,
            "block": self.block,
            "n_rows": self.n_rows,
            "n_kept": self.n_kept,
            "n_rejected": self.n_rows - self.n_kept,
            "n_identities": self.n_identities,
            "reject_reasons": dict(sorted(self.reasons.items())),
            "first_key": self.first_key,
            "last_key": self.last_key,
            "labels_sha256": self.labels.hexdigest(),
            "tar_bytes": tar_bytes,
            "tar_sha256": tar_sha256,
            "layout": self.settings.layout(),
            "layout_hash": self.settings.layout_hash(),
        }

    def close(self) -> dict[str, Any]:
        """Finish the shard: end the tar, rename tar and manifest, then write the stats."""
        end = archive_end(self.offset)
        tar_bytes = self.offset + len(end)
        if not self.write:
            assert self.previous is not None
            got = {
                "n_rows": self.n_rows,
                "n_kept": self.n_kept,
                "first_key": self.first_key,
                "last_key": self.last_key,
                "labels_sha256": self.labels.hexdigest(),
                "tar_bytes": tar_bytes,
            }
            expected = {k: self.previous.get(k) for k in got}
            if got != expected:
                raise ResumeMismatchError(
                    f"{self.stem} is complete on disk but the input differs from what wrote it "
                    f"(samples or label map; on disk {expected}, input {got}); delete the shard "
                    "directory or restore the original input and label map"
                )
            return self.previous
        fsync = self.settings.fsync
        self._tar.write(end)
        self._sha.update(end)
        self._tar.flush()
        if fsync:
            os.fsync(self._tar.fileno())
        self._tar.close()
        self._manifest.close()
        self._man_file.flush()
        if fsync:
            os.fsync(self._man_file.fileno())
        self._man_file.close()
        os.replace(self._tar_tmp, self._tar_final)
        os.replace(self._man_tmp, self._man_final)
        if fsync:
            fsync_dir(self.directory)
        stats = self._stats(tar_bytes, self._sha.hexdigest())
        write_json_atomic(stats_path(self.directory, self.stem), stats, fsync=fsync)
        logger.info(
            "wrote %s: %d kept, %d rejected, %.1f MB",
            self.stem,
            self.n_kept,
            self.n_rows - self.n_kept,
            tar_bytes / 1e6,
        )
        return stats

    def abort(self) -> None:
        """Drop the temporary files after an exception (a SIGKILL leaves them for the next run)."""
        if self.write:
            with contextlib.suppress(Exception):
                self._manifest.close()
            for f in (self._tar, self._man_file):
                f.close()
            self._tar_tmp.unlink(missing_ok=True)
            self._man_tmp.unlink(missing_ok=True)


class _BlockWriter:
    """Writes the shards of one identity block, rolling over at maxcount / maxsize."""

    def __init__(self, directory: Path, split: str, block: int, settings: ShardSettings) -> None:
        self.directory = directory
        self.split = split
        self.block = block
        self.settings = settings
        self.identities = block_identity_range(block, settings)
        self.numbers = block_shard_numbers(block, settings)
        self.current: _ShardOutput | None = None
        self.shards: list[str] = []
        self.written: list[str] = []
        self.skipped: list[str] = []
        self.n_rows = 0
        self.n_kept = 0
        self.last_key: str | None = None
        self.last_identity = -1
        self.labels: dict[int, int] = {}  # identity -> label of the rows written so far

    def _open_next(self) -> None:
        index = len(self.shards)
        if index >= len(self.numbers):
            raise ValueError(
                f"block {self.block} of split {self.split!r} needs more than "
                f"shards_per_block={self.settings.shards_per_block} shards; raise shards_per_block "
                "or maxcount/maxsize, or lower identities_per_block"
            )
        self.current = _ShardOutput(
            self.directory, self.split, self.block, self.numbers[index], self.settings
        )
        self.shards.append(self.current.stem)

    def _close_current(self) -> None:
        current = self.current
        if current is None:
            return
        current.close()
        (self.written if current.write else self.skipped).append(current.stem)
        self.current = None

    def add(self, sample: ShardSample, label: int | None) -> None:
        if sample.identity not in self.identities:
            raise ValueError(
                f"{sample.key}: identity {sample.identity} is not in block {self.block} "
                f"(identities {self.identities.start}..{self.identities.stop - 1})"
            )
        if self.last_key is not None and sample.key <= self.last_key:
            raise SampleOrderError(
                f"samples must come in strictly ascending key order within a block: got "
                f"{sample.key!r} after {self.last_key!r} (sort the input by key; keys must be unique)"
            )
        if sample.identity < self.last_identity:
            raise SampleOrderError(
                f"{sample.key}: identity {sample.identity} comes after {self.last_identity}; "
                "samples must come in non-decreasing identity order"
            )
        if sample.kept and label is None:
            raise ValueError(f"{sample.key}: a kept sample needs a label")
        if label is not None and self.labels.setdefault(sample.identity, label) != label:
            raise ValueError(
                f"{sample.key}: identity {sample.identity} has label {label} here and "
                f"{self.labels[sample.identity]} on an earlier sample"
            )
        self.last_key = sample.key
        self.last_identity = sample.identity
        enc = encode_sample(sample, self.settings, label) if sample.kept else None
        current = self.current
        if current is None:
            self._open_next()
        elif enc is not None and current.n_kept > 0:
            if (
                current.n_kept >= self.settings.maxcount
                or current.offset + enc.nbytes > self.settings.maxsize
            ):
                self._close_current()
                self._open_next()
        assert self.current is not None
        self.current.add(sample, enc, label)
        self.n_rows += 1
        self.n_kept += enc is not None

    def finish(self) -> BlockResult:
        if self.current is None and not self.shards:
            raise EmptyDatasetError(
                f"block {self.block} of split {self.split!r} got no samples; "
                "do not schedule writers for empty blocks"
            )
        self._close_current()
        marker = {
            "format_version": FORMAT_VERSION,
            "split": self.split,
            "block": self.block,
            "identities": [self.identities.start, self.identities.stop],
            "shards": self.shards,
            "n_rows": self.n_rows,
            "n_kept": self.n_kept,
            "labels": [[identity, label] for identity, label in sorted(self.labels.items())],
            "layout_hash": self.settings.layout_hash(),
        }
        write_json_atomic(
            block_marker_path(self.directory, self.split, self.block),
            marker,
            fsync=self.settings.fsync,
        )
        return BlockResult(
            self.split,
            self.block,
            tuple(self.shards),
            tuple(self.written),
            tuple(self.skipped),
            self.n_rows,
            self.n_kept,
        )

    def abort(self) -> None:
        if self.current is not None:
            self.current.abort()
            self.current = None


def _prepare(directory: Path | str, split: str, settings: ShardSettings | None) -> tuple:
    settings = settings or ShardSettings()
    if split not in settings.splits:
        raise ValueError(f"split {split!r} is not one of settings.splits {settings.splits}")
    directory = Path(directory)
    (directory / BLOCKS_DIR).mkdir(parents=True, exist_ok=True)
    return directory, settings


def _block_done(
    directory: Path, split: str, block: int, settings: ShardSettings, labels: dict[int, int]
) -> dict | None:
    """The marker of a block whose shards are all complete, intact and written with
    ``labels`` (the label map restricted to the block), else None."""
    path = block_marker_path(directory, split, block)
    if not path.exists():
        return None
    try:
        marker = read_json(path)
    except (OSError, ValueError):
        return None
    if marker.get("format_version") != FORMAT_VERSION:
        return None
    if marker.get("layout_hash") != settings.layout_hash():
        return None
    if marker.get("labels") != [[i, label] for i, label in sorted(labels.items())]:
        logger.info("block %d of split %s was written with other labels; checking it", block, split)
        return None
    for stem in marker.get("shards", []):
        if _complete_stats(directory, stem, settings) is None:
            return None
    return marker


def write_block(
    samples: Iterable[ShardSample],
    directory: Path | str,
    block: int,
    *,
    labels: Mapping[int, int],
    split: str = "train",
    settings: ShardSettings | None = None,
) -> BlockResult:
    """Write the shards of one identity block; N writers can run this on N blocks at once.

    All samples must have identities in ``block_identity_range(block)``. The
    block owns shard numbers ``block*shards_per_block ...``, so writers never
    collide. ``labels`` is the dataset's label map, ``label_map(kept identity
    ids of all splits)``, the same for every writer (only its part inside the
    block is read, so a full map costs nothing per block). When the block's
    marker (``_blocks/{split}-{block:06d}.json``) exists, its shards are intact
    and it was written with the same labels, the input is not read at all.
    Call ``finalize`` once all blocks are done.
    """
    directory, settings = _prepare(directory, split, settings)
    part = block_labels(labels, block_identity_range(block, settings))
    done = _block_done(directory, split, block, settings, part)
    if done is not None:
        logger.info("block %d of split %s is complete; skipping", block, split)
        shards = tuple(done["shards"])
        return BlockResult(split, block, shards, (), shards, done["n_rows"], done["n_kept"])
    writer = _BlockWriter(directory, split, block, settings)
    try:
        for sample, label in assign_labels(samples, labels):
            writer.add(sample, label)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def write_split(
    samples: Iterable[ShardSample],
    directory: Path | str,
    *,
    split: str = "train",
    settings: ShardSettings | None = None,
    labels: Mapping[int, int] | None = None,
) -> SplitResult:
    """Write one split from all its candidate samples, in one process.

    Produces the same files as running ``write_block`` on every block. Samples
    must be sorted by key (``make_key`` keys sorted as strings are sorted by
    identity then sample). Every kept sample gets ``{key}.cls``: its label in
    ``labels`` (``label_map(kept identity ids of all splits)``), or, when
    ``labels`` is None, in the map of this split's own kept identities, built
    while streaming (so only allowed when ``settings.splits`` has one split:
    labels are shared by all splits). Resumes: complete shards are skipped,
    partial ones rewritten. Raises ``EmptyDatasetError`` when ``samples`` is
    empty.
    """
    directory, settings = _prepare(directory, split, settings)
    if labels is None and len(settings.splits) > 1:
        raise ValueError(
            f"settings.splits has {len(settings.splits)} splits and labels are shared by all of "
            "them: pass labels=shards.label_map(kept identity ids of every split)"
        )
    if labels is not None:
        check_label_map(labels)
    results: list[BlockResult] = []
    writer: _BlockWriter | None = None
    try:
        for sample, label in assign_labels(samples, labels):
            block = block_of(sample.identity, settings)
            if writer is None or block != writer.block:
                if writer is not None:
                    if block < writer.block:
                        raise SampleOrderError(
                            f"{sample.key}: identity {sample.identity} comes after identity "
                            f"{writer.last_identity}; sort the samples by identity and key"
                        )
                    results.append(writer.finish())
                writer = _BlockWriter(directory, split, block, settings)
            writer.add(sample, label)
        if writer is None:
            raise EmptyDatasetError(
                f"write_split got no samples for split {split!r}: refusing to write an empty "
                "dataset (is the identity list or the filter output empty?)"
            )
        results.append(writer.finish())
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return SplitResult(split, tuple(results))
