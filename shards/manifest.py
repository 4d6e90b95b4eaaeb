"""The per-shard parquet manifest: one row per candidate sample, kept or rejected.

Columns (all shards share this schema):

==============  =======  ============================================================
key             string   sample key (unique in the dataset)
split           string   split name
shard           string   shard stem, e.g. ``train-000003``
block           int32    identity block that wrote the shard
identity        int64    synthetic identity id
label           int32    contiguous class label 0..C-1 (as in the tar's ``.cls``), written
                         by the writer; null for identities without kept samples
kept            bool     the filter's decision; only kept rows are in the tar
reject_reason   string   why it was rejected (null when kept)
generator       string   generator name
seed            int64    generation seed
prompt          string   prompt or condition text (nullable)
det_score       float64  detector confidence, 0..1 (nullable)
centroid_cos    float64  cosine similarity to the identity centroid (nullable)
face_sha256     string   sha256 hex of the face JPEG (``{key}.jpg``)
face_bytes      int64    its size in bytes
full_sha256     string   sha256 hex of the full image (``{key}.full.{ext}``), nullable
full_bytes      int64    its size in bytes, nullable
full_ext        string   ``png`` or ``jpg``, nullable
json_sha256     string   sha256 hex of ``{key}.json`` (kept rows only)
json_bytes      int64    its size in bytes (kept rows only)
==============  =======  ============================================================
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from .atomic import atomic_open
from .layout import manifest_path, parse_shard_name

if TYPE_CHECKING:
    import dask.dataframe

logger = logging.getLogger(__name__)

SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("split", pa.string()),
        ("shard", pa.string()),
        ("block", pa.int32()),
        ("identity", pa.int64()),
        ("label", pa.int32()),
        ("kept", pa.bool_()),
        ("reject_reason", pa.string()),
        ("generator", pa.string()),
        ("seed", pa.int64()),
        ("prompt", pa.string()),
        ("det_score", pa.float64()),
        ("centroid_cos", pa.float64()),
        ("face_sha256", pa.string()),
        ("face_bytes", pa.int64()),
        ("full_sha256", pa.string()),
        ("full_bytes", pa.int64()),
        ("full_ext", pa.string()),
        ("json_sha256", pa.string()),
        ("json_bytes", pa.int64()),
    ]
)
COLUMNS = tuple(SCHEMA.names)
ROW_GROUP_ROWS = 16_384
_WRITE_OPTIONS: dict[str, Any] = {"compression": "zstd", "use_dictionary": True}


class ManifestWriter:
    """Collect rows column-wise and flush them to parquet in bounded row groups.

    Memory stays bounded by ``ROW_GROUP_ROWS`` rows however many rows a shard
    gets (rejected rows are not capped by ``maxcount``).
    """

    def __init__(self, f: Any) -> None:
        self._writer = pq.ParquetWriter(f, SCHEMA, **_WRITE_OPTIONS)
        self._columns: list[list[Any]] = [[] for _ in COLUMNS]
        self.rows = 0

    def add(self, *values: Any) -> None:
        """Append one row, values in ``COLUMNS`` order."""
        for column, value in zip(self._columns, values, strict=True):
            column.append(value)
        self.rows += 1
        if len(self._columns[0]) >= ROW_GROUP_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self._columns[0]:
            arrays = [pa.array(c, type=t) for c, t in zip(self._columns, SCHEMA.types, strict=True)]
            self._writer.write_table(pa.Table.from_arrays(arrays, schema=SCHEMA))
            self._columns = [[] for _ in COLUMNS]

    def close(self) -> None:
        self._flush()
        self._writer.close()


def write_manifest_table(table: pa.Table, final: Path, *, fsync: bool = True) -> Path:
    """Write a whole manifest table atomically (for repairs and tests; writers stream rows)."""
    with atomic_open(final, fsync=fsync) as f:
        pq.write_table(table.cast(SCHEMA), f, row_group_size=ROW_GROUP_ROWS, **_WRITE_OPTIONS)
    return final


def read_manifest(path: Path, columns: Sequence[str] | None = None) -> pa.Table:
    """One shard's manifest."""
    return pq.read_table(path, columns=list(columns) if columns is not None else None)


def manifest_paths(directory: Path | str, split: str | None = None) -> list[Path]:
    """Manifest files of complete shards, in shard order."""
    directory = Path(directory)
    paths = []
    for path in sorted(directory.glob("*.parquet")):
        parsed = parse_shard_name(path.stem)
        if parsed is None or (split is not None and parsed[0] != split):
            continue
        if (directory / f"{path.stem}_stats.json").exists():
            paths.append(path)
    return paths


def read_manifests(
    directory: Path | str, split: str | None = None, columns: Sequence[str] | None = None
) -> pa.Table:
    """All manifests of a shard directory (or of one split) as one pyarrow table.

    Every candidate sample is a row, kept or rejected; filter with
    ``table.filter(pc.field("kept"))`` for what is in the tars.
    """
    paths = manifest_paths(directory, split)
    if not paths:
        raise FileNotFoundError(f"no complete shard manifests in {directory} (split={split})")
    tables = [read_manifest(p, columns) for p in paths]
    return pa.concat_tables(tables)


def manifests_dask(directory: Path | str, split: str | None = None) -> dask.dataframe.DataFrame:
    """All manifests as a dask dataframe, one partition per shard (lazy).

    Needs ``dask[dataframe]`` (pandas); ``read_manifests`` needs only pyarrow.
    """
    try:
        import dask.dataframe as dd
    except ImportError as exc:
        raise ImportError(
            "manifests_dask needs dask[dataframe] (pandas), which is not installed; "
            "install dask[dataframe] or use shards.read_manifests for a pyarrow table"
        ) from exc

    paths = manifest_paths(directory, split)
    if not paths:
        raise FileNotFoundError(f"no complete shard manifests in {directory} (split={split})")
    return dd.read_parquet([os.fspath(p) for p in paths])


__all__ = [
    "COLUMNS",
    "SCHEMA",
    "ManifestWriter",
    "manifest_path",
    "manifest_paths",
    "manifests_dask",
    "read_manifest",
    "read_manifests",
    "write_manifest_table",
]
