"""Verify a finished shard directory against its own records and list every problem.

Checked: every tar against its manifest (keys in order, members, sha256 of
each payload, identity, label), every tar's size and sha256 against its stats file,
manifests against stats (counts, reject reasons, first/last key), member
safety, no duplicate keys in the dataset, labels contiguous 0..C-1 and one
per identity (manifests, labels.json, dataset.json), and sizes.json, the
wids indexes and dataset.json's counts against the shards.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from .atomic import read_json
from .errors import UnsafeTarError
from .labels import labels_sha256
from .layout import (
    DATASET_JSON,
    LABELS_JSON,
    SIZES_JSON,
    index_path,
    manifest_path,
    parse_shard_name,
    stats_path,
    tar_path,
    temporary_files,
)
from .manifest import COLUMNS, read_manifest
from .safety import DEFAULT_MAX_MEMBER_BYTES
from .tarformat import iter_samples
from .widsindex import build_index
from .writer import FORMAT_VERSION

logger = logging.getLogger(__name__)

_HASH_CHUNK = 1 << 22


@dataclass(frozen=True, order=True)
class Problem:
    """One problem: the file it concerns and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _sha(data: Any) -> str:
    return hashlib.sha256(data).hexdigest()


class _Checker:
    def __init__(self, directory: Path, max_member_bytes: int) -> None:
        self.directory = directory
        self.max_member_bytes = max_member_bytes
        self.problems: list[Problem] = []

    def add(self, path: Path | str, message: str) -> None:
        name = path.name if isinstance(path, Path) and path.parent == self.directory else str(path)
        self.problems.append(Problem(name, message))

    def load_json(self, path: Path) -> Any:
        if not path.exists():
            self.add(path, "missing")
            return None
        try:
            return read_json(path)
        except (OSError, ValueError) as exc:
            self.add(path, f"unreadable JSON: {exc}")
            return None

    def shard(self, stem: str, split: str) -> tuple[pa.Table | None, dict | None]:
        """Check one shard; returns its manifest and stats (None where missing or unreadable)."""
        d = self.directory
        tar, man, st = tar_path(d, stem), manifest_path(d, stem), stats_path(d, stem)
        for p in (tar, man, st):
            if not p.exists():
                self.add(p, "missing (shard listed in dataset.json)")
        stats = self.load_json(st) if st.exists() else None
        table = None
        if man.exists():
            try:
                table = read_manifest(man)
            except Exception as exc:  # any parquet error is a problem to report
                self.add(man, f"unreadable manifest: {exc}")
        if table is not None and tuple(table.column_names) != COLUMNS:
            self.add(man, f"columns {table.column_names} differ from the manifest schema")
            table = None
        if table is not None:
            self._manifest_vs_stats(man, table, stats, stem, split)
            if tar.exists():
                self._tar(tar, table, stats)
        return table, stats

    def _manifest_vs_stats(
        self, man: Path, table: pa.Table, stats: dict | None, stem: str, split: str
    ) -> None:
        for column, expected in (("shard", stem), ("split", split)):
            values = set(table[column].to_pylist())
            if values != {expected}:
                self.add(man, f"column {column} holds {sorted(map(str, values))}, not {expected!r}")
        if stats is None:
            return
        if stats.get("format_version") != FORMAT_VERSION:
            self.add(
                stats_path(self.directory, stem),
                f"format version {stats.get('format_version')}, not {FORMAT_VERSION} "
                "(no labels in the tars): rewrite the shards",
            )
        kept = table.filter(table["kept"])
        reasons = Counter(table.filter(pc.invert(table["kept"]))["reject_reason"].to_pylist())
        keys = table["key"].to_pylist()
        got = {
            "shard": stem,
            "split": split,
            "n_rows": table.num_rows,
            "n_kept": kept.num_rows,
            "n_rejected": table.num_rows - kept.num_rows,
            "n_identities": len(pc.unique(kept["identity"])),
            "reject_reasons": dict(reasons),
            "first_key": keys[0] if keys else None,
            "last_key": keys[-1] if keys else None,
            "labels_sha256": labels_sha256(table["label"].to_pylist()),
        }
        for name, value in got.items():
            if stats.get(name) != value:
                self.add(
                    stats_path(self.directory, stem),
                    f"{name} is {stats.get(name)!r} but the manifest gives {value!r}",
                )

    def _tar(self, tar: Path, table: pa.Table, stats: dict | None) -> None:
        if stats is not None:
            size = tar.stat().st_size
            if size != stats.get("tar_bytes"):
                self.add(tar, f"{size} bytes but stats say {stats.get('tar_bytes')}")
            digest = _file_sha256(tar)
            if digest != stats.get("tar_sha256"):
                self.add(tar, f"sha256 {digest[:16]}... differs from stats (content changed)")
        kept = table.filter(table["kept"]).to_pylist()
        n = 0
        try:
            with open(tar, "rb", buffering=1 << 20) as f:
                for sample in iter_samples(
                    f, source=str(tar), max_member_bytes=self.max_member_bytes
                ):
                    if n < len(kept):
                        self._sample(tar, sample, kept[n])
                    n += 1
        except UnsafeTarError as exc:
            self.add(tar, f"unsafe or corrupt tar: {exc}")
            return
        if n != len(kept):
            self.add(tar, f"holds {n} samples but the manifest has {len(kept)} kept rows")

    def _sample(self, tar: Path, sample: dict[str, Any], row: dict[str, Any]) -> None:
        key = sample["__key__"]
        if key != row["key"]:
            self.add(tar, f"sample {key!r} where the manifest has {row['key']!r}")
            return
        expected = {"cls", "id", "jpg", "json"}
        if row["full_ext"] is not None:
            expected.add(f"full.{row['full_ext']}")
        exts = set(sample) - {"__key__"}
        if exts != expected:
            self.add(tar, f"{key}: members {sorted(exts)}, expected {sorted(expected)}")
        checks = [
            ("jpg", "face_sha256", "face_bytes"),
            ("json", "json_sha256", "json_bytes"),
        ]
        if row["full_ext"] is not None:
            checks.append((f"full.{row['full_ext']}", "full_sha256", "full_bytes"))
        for ext, sha_col, bytes_col in checks:
            data = sample.get(ext)
            if data is None:
                continue
            if len(data) != row[bytes_col] or _sha(data) != row[sha_col]:
                self.add(
                    tar, f"{key}.{ext}: sha256/size differ from the manifest (corrupt payload)"
                )
        ident = sample.get("id")
        if ident is not None and ident != str(row["identity"]).encode():
            self.add(tar, f"{key}.id is {ident!r} but the manifest identity is {row['identity']}")
        cls = sample.get("cls")
        if cls is not None and cls != str(row["label"]).encode():
            self.add(tar, f"{key}.cls is {cls!r} but the manifest label is {row['label']}")


def _listed_shards(checker: _Checker, dataset: dict | None) -> dict[str, list[str]]:
    d = checker.directory
    on_disk: dict[str, set[str]] = {}
    for path in d.iterdir():
        stem = path.name
        for suffix in (".tar", ".parquet", "_stats.json"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        parsed = parse_shard_name(stem)
        if parsed is not None:
            on_disk.setdefault(parsed[0], set()).add(stem)
    if dataset is None:
        return {split: sorted(stems) for split, stems in sorted(on_disk.items())}
    listed = {split: list(doc.get("shards", [])) for split, doc in dataset["splits"].items()}
    all_listed = {stem for stems in listed.values() for stem in stems}
    for stems in on_disk.values():
        for stem in sorted(stems - all_listed):
            checker.add(stem, "shard files on disk but not listed in dataset.json")
    return listed


def _check_labels(checker: _Checker, rows: pa.Table, dataset: dict | None) -> None:
    kept = rows.filter(rows["kept"])
    if kept["label"].null_count:
        checker.add("manifests", f"{kept['label'].null_count} kept rows have no label")
        kept = kept.filter(pc.is_valid(kept["label"]))
    pairs = kept.group_by(["identity", "label"]).aggregate([]).sort_by("label")
    identities = pairs["identity"].to_pylist()
    labels = pairs["label"].to_pylist()
    for ident, n in Counter(identities).items():
        if n > 1:
            checker.add("manifests", f"identity {ident} has {n} different labels")
    for label, n in Counter(labels).items():
        if n > 1:
            checker.add("manifests", f"label {label} is used by {n} identities")
    distinct = sorted(set(labels))
    if distinct != list(range(len(distinct))):
        missing = sorted(set(range(max(distinct, default=-1) + 1)) - set(distinct))
        checker.add(
            "manifests",
            f"labels are not contiguous 0..C-1: {len(distinct)} labels, max "
            f"{max(distinct, default=None)}, gaps at {missing[:10]}",
        )
    mapping = dict(zip(identities, labels, strict=True))
    rejected = rows.filter(pc.invert(rows["kept"]))
    for ident, label in zip(
        rejected["identity"].to_pylist(), rejected["label"].to_pylist(), strict=True
    ):
        if mapping.get(ident) != label:
            checker.add(
                "manifests",
                f"rejected row of identity {ident} has label {label}, not {mapping.get(ident)}",
            )
            break
    doc = checker.load_json(checker.directory / LABELS_JSON)
    if doc is not None:
        listed = {ident: label for label, ident in enumerate(doc.get("identity_of_label", []))}
        if listed != mapping:
            checker.add(LABELS_JSON, "identity_of_label disagrees with the manifests' labels")
        if doc.get("class_count") != len(distinct):
            checker.add(LABELS_JSON, f"class_count {doc.get('class_count')} != {len(distinct)}")
    if dataset is not None and dataset.get("class_count") != len(distinct):
        checker.add(DATASET_JSON, f"class_count {dataset.get('class_count')} != {len(distinct)}")


def verify_dataset(
    directory: Path | str,
    *,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    progress: bool = False,
) -> list[Problem]:
    """Every problem found in a finalized shard directory (an empty list means it is sound)."""
    directory = Path(directory)
    if not directory.is_dir():
        return [Problem(str(directory), "not a directory")]
    checker = _Checker(directory, max_member_bytes)
    for tmp in temporary_files(directory):
        checker.add(tmp, "leftover temporary file of an interrupted writer")
    dataset = None
    if (directory / DATASET_JSON).exists():
        dataset = checker.load_json(directory / DATASET_JSON)
    else:
        checker.add(DATASET_JSON, "missing: finalize has not run (or the dataset is incomplete)")
    listed = _listed_shards(checker, dataset)
    if not any(listed.values()):
        checker.add(directory, "no shards: an empty dataset is not a dataset")
        return sorted(checker.problems)

    work = [(split, stem) for split, stems in listed.items() for stem in stems]
    if progress:
        from tqdm import tqdm

        work = tqdm(work, desc="verify", unit="shard")
    tables: list[pa.Table] = []
    stats_by_split: dict[str, list[dict]] = {}
    for split, stem in work:
        table, stats = checker.shard(stem, split)
        if table is not None:
            tables.append(table.select(["key", "identity", "label", "kept"]))
        if stats is not None:
            stats_by_split.setdefault(split, []).append(stats)

    if tables:
        rows = pa.concat_tables(tables)
        counts = pc.value_counts(rows["key"])
        dupes = counts.filter(pc.greater(counts.field("counts"), 1))
        for d in dupes.to_pylist()[:20]:
            checker.add("manifests", f"duplicate key {d['values']!r} ({d['counts']} rows)")
        if rows.filter(rows["kept"]).num_rows == 0:
            checker.add("manifests", "no kept samples")
        _check_labels(checker, rows, dataset)

    sizes = checker.load_json(directory / SIZES_JSON)
    expected_sizes = {
        f"{s['shard']}.tar": s["n_kept"] for stats in stats_by_split.values() for s in stats
    }
    if sizes is not None and sizes != expected_sizes:
        checker.add(SIZES_JSON, "disagrees with the shards' stats (counts or shard list)")
    if dataset is not None:
        for split, stats in stats_by_split.items():
            index = checker.load_json(index_path(directory, split))
            if (
                index is not None
                and index.get("shardlist") != build_index(split, stats)["shardlist"]
            ):
                checker.add(index_path(directory, split), "shardlist disagrees with the shards")
            doc = dataset["splits"].get(split, {})
            for name, key in (("n_samples", "n_kept"), ("n_rows", "n_rows")):
                total = sum(s[key] for s in stats)
                if doc.get(name) != total:
                    checker.add(
                        DATASET_JSON, f"splits.{split}.{name} is {doc.get(name)}, not {total}"
                    )
    return sorted(checker.problems)
