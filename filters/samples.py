"""Candidate samples in memory: keys, identities, face outcomes and embeddings per embedder.

The embed stage writes ``embed/part-NNNNN.parquet``: one row per candidate image
(``key``, ``status``, ``n_faces``, ``det_score``, ``box``, ``landmarks``, ...),
an ``identity`` column, and one fixed-size-list float32 column per embedder named
``embedding_<name>`` (e.g. ``embedding_sface``). A single ``embedding`` column, as
written by ``facefoundry faces embed``, is accepted for the embedder named in the
file's metadata. Identities come from the ``identity`` column, else from
``generate/part-*.parquet`` beside the embed folder (joined on key), else from the
key's folder (``Name/Name_0001.jpg`` -> ``Name``, the LFW layout).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from facefoundry.faces.parts import META_PREFIX, STATUS_OK, fixed_list  # noqa: F401

logger = logging.getLogger(__name__)


def embedder_name(spec: str) -> str:
    """The embedder's name for a spec, without loading it (``onnx:/a/m.onnx`` -> ``onnx:m.onnx``).

    An ``insightface:DIR`` pack embeds as ``onnx:<its recognition model file>``: name it
    that way in filter settings.
    """
    if spec.startswith("onnx:"):
        return "onnx:" + Path(spec.split(":", 1)[1]).name
    return spec


def embedding_column(spec: str) -> str:
    """Parquet column that holds one embedder's vectors."""
    return f"embedding_{embedder_name(spec)}"


@dataclass
class SampleTable:
    """Column arrays of N candidate samples; ``embeddings[name]`` is N x dim float32 (NaN rows = none).

    ``identities`` keeps the input's identity values (ints for synthetic ids, strings
    for LFW names); ``groups`` are their 0..G-1 codes in sorted identity order.
    """

    keys: np.ndarray
    identities: np.ndarray
    embeddings: dict[str, np.ndarray]
    status: np.ndarray | None = None
    n_faces: np.ndarray | None = None
    det_score: np.ndarray | None = None
    checksums: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.keys)
        self.keys = np.asarray(self.keys, dtype=object)
        self.identities = np.asarray(self.identities)
        if self.status is None:
            self.status = np.full(n, STATUS_OK, dtype=object)
        if self.n_faces is None:
            self.n_faces = np.ones(n, dtype=np.int32)
        if self.det_score is None:
            self.det_score = np.ones(n, dtype=np.float32)
        self.status = np.asarray(self.status, dtype=object)
        self.n_faces = np.asarray(self.n_faces, dtype=np.int32)
        self.det_score = np.asarray(self.det_score, dtype=np.float32)
        self.embeddings = {
            embedder_name(k): np.asarray(v, dtype=np.float32) for k, v in self.embeddings.items()
        }
        for name, array in [("identities", self.identities), ("status", self.status)] + [
            (f"embeddings[{k}]", v) for k, v in self.embeddings.items()
        ]:
            if len(array) != n:
                raise ValueError(f"SampleTable: {name} has {len(array)} rows, keys have {n}")
        if len(set(self.keys.tolist())) != n:
            raise ValueError("SampleTable: sample keys must be unique")
        self.group_ids, self.groups = np.unique(self.identities, return_inverse=True)
        self.groups = self.groups.astype(np.int64).reshape(-1)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def n_groups(self) -> int:
        return len(self.group_ids)

    def vectors(self, spec: str) -> np.ndarray:
        name = embedder_name(spec)
        if name not in self.embeddings:
            raise KeyError(
                f"no '{embedding_column(name)}' embeddings in the input (have: "
                f"{', '.join(sorted(self.embeddings)) or 'none'}); embed the samples with "
                f"{name} too, or choose an embedder that was used"
            )
        return self.embeddings[name]


def find_parts(path: str | Path, folder: str = "embed") -> list[Path]:
    """Parquet parts of a stage: a run directory (``path/folder``), the folder itself or a file."""
    path = Path(path)
    if path.is_file():
        return [path]
    if (path / folder).is_dir():
        path = path / folder
    parts = sorted(p for p in path.glob("*.parquet") if not p.name.startswith("_"))
    if not parts:
        raise FileNotFoundError(
            f"no parquet parts found in {path} (expected {folder}/part-*.parquet)"
        )
    return parts


def _fixed_list_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    if isinstance(array, pa.ExtensionArray):
        array = array.storage
    if pa.types.is_fixed_size_list(array.type):
        dim = array.type.list_size
        values = array.flatten() if array.offset or array.null_count else array.values
        out = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32)
        if array.null_count:  # flatten() drops null rows: put NaN rows back
            full = np.full((len(array), dim), np.nan, dtype=np.float32)
            full[np.asarray(array.is_valid())] = out.reshape(-1, dim)
            return full
        return out.reshape(len(array), dim)
    rows = array.to_pylist()  # variable-size lists: slower, still accepted
    dims = {len(r) for r in rows if r is not None}
    if len(dims) > 1:
        raise ValueError(f"embedding rows have different lengths: {sorted(dims)}")
    dim = dims.pop() if dims else 0
    return np.array(
        [r if r is not None else [np.nan] * dim for r in rows], dtype=np.float32
    ).reshape(len(rows), dim)


def _embedding_columns(schema: pa.Schema, wanted: Sequence[str]) -> dict[str, str]:
    """Column name per wanted embedder name, found by prefix or by the file's metadata."""
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    found = {}
    for name in wanted:
        if f"embedding_{name}" in schema.names:
            found[name] = f"embedding_{name}"
        elif "embedding" in schema.names and meta.get(META_PREFIX + "name") == name:
            found[name] = "embedding"
    return found


def _checksums(schema: pa.Schema, names: Sequence[str]) -> dict[str, str]:
    meta = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
    out = {}
    for name in names:
        value = meta.get(f"{META_PREFIX}{name}.checksum")
        if value is None and meta.get(META_PREFIX + "name") == name:
            value = meta.get(META_PREFIX + "checksum")
        if value:
            out[name] = value
    return out


def read_part(path: str | Path, embedders: Sequence[str]) -> dict:
    """One embed part as plain arrays (no identity resolution); missing embedders are skipped."""
    names = [embedder_name(s) for s in embedders]
    schema = pq.read_schema(path)
    columns = _embedding_columns(schema, names)
    wanted = ["key"] + [
        c for c in ("identity", "status", "n_faces", "det_score") if c in schema.names
    ]
    table = pq.read_table(path, columns=wanted + sorted(set(columns.values())))
    out: dict = {"key": np.asarray(table["key"].to_pylist(), dtype=object)}
    n = table.num_rows
    if "identity" in table.column_names and table["identity"].null_count < n:
        if table["identity"].null_count:
            raise ValueError(f"{path}: {table['identity'].null_count} samples have no identity")
        out["identity"] = table["identity"].to_numpy(zero_copy_only=False)
    out["status"] = (
        np.asarray(table["status"].to_pylist(), dtype=object)
        if "status" in table.column_names
        else np.full(n, STATUS_OK, dtype=object)
    )
    if "n_faces" in table.column_names:
        values = table["n_faces"].to_numpy(zero_copy_only=False).astype(np.float64)
        out["n_faces"] = np.nan_to_num(values, nan=0.0).astype(np.int32)
    else:
        out["n_faces"] = np.ones(n, dtype=np.int32)
    if "det_score" in table.column_names:  # NaN where no face was detected
        out["det_score"] = table["det_score"].to_numpy(zero_copy_only=False).astype(np.float32)
    else:
        out["det_score"] = np.ones(n, dtype=np.float32)
    out["embeddings"] = {name: _fixed_list_to_numpy(table[col]) for name, col in columns.items()}
    out["checksums"] = _checksums(schema, list(columns))
    return out


def _identities_from_generate(generate_dir: Path, keys: np.ndarray) -> np.ndarray | None:
    parts = sorted(generate_dir.glob("part-*.parquet")) if generate_dir.is_dir() else []
    if not parts:
        return None
    tables = [pq.read_table(p, columns=["key", "identity"]) for p in parts]
    table = pa.concat_tables(tables)
    lookup = dict(zip(table["key"].to_pylist(), table["identity"].to_pylist(), strict=True))
    missing = [k for k in keys[:5] if k not in lookup]
    if missing:
        raise KeyError(f"samples {missing} have no identity in {generate_dir}")
    return np.asarray([lookup[k] for k in keys])


def identity_from_key(keys: np.ndarray) -> np.ndarray:
    """The key's folder as identity (``Name/Name_0001.jpg`` -> ``Name``)."""
    out = []
    for key in keys:
        if "/" not in key:
            raise ValueError(
                f"sample {key!r} has no identity: add an 'identity' column, a generate/ "
                "parquet beside embed/, or keys of the form IDENTITY/FILE"
            )
        out.append(key.rsplit("/", 1)[0])
    return np.asarray(out, dtype=object)


def merge_parts(parts: Sequence[dict], generate_dir: Path | None = None) -> SampleTable:
    """Concatenate part arrays into one SampleTable; resolve identities if the parts lack them."""
    if not parts:
        raise ValueError("no parts to merge")
    names = set(parts[0]["embeddings"])
    for part in parts[1:]:
        names &= set(part["embeddings"])
    keys = np.concatenate([p["key"] for p in parts])
    if all("identity" in p for p in parts):
        identities = np.concatenate([p["identity"] for p in parts])
    else:
        identities = _identities_from_generate(generate_dir, keys) if generate_dir else None
        if identities is None:
            identities = identity_from_key(keys)
    checksums: dict[str, str] = {}
    for part in parts:
        for name, value in part["checksums"].items():
            if checksums.setdefault(name, value) != value:
                raise ValueError(f"parts were embedded with different {name} weights")
    return SampleTable(
        keys=keys,
        identities=identities,
        status=np.concatenate([p["status"] for p in parts]),
        n_faces=np.concatenate([p["n_faces"] for p in parts]),
        det_score=np.concatenate([p["det_score"] for p in parts]),
        embeddings={n: np.concatenate([p["embeddings"][n] for p in parts]) for n in names},
        checksums=checksums,
    )


def generate_dir_beside(path: str | Path) -> Path | None:
    """Where a run's ``generate/`` folder would be for a run or embed folder (the CLI's
    guess when no folder is given); None for a single file."""
    path = Path(path)
    if (path / "embed").is_dir():
        return path / "generate"
    return path.parent / "generate" if path.is_dir() else None


def read_samples(
    path: str | Path, embedders: Sequence[str], generate_dir: str | Path | None = None
) -> SampleTable:
    """Read every embed part under ``path`` (run dir, embed dir or one parquet file);
    identities come from the parts, else from ``generate_dir``'s chunk tables."""
    parts = find_parts(path)
    arrays = [read_part(p, embedders) for p in parts]
    generate = Path(generate_dir) if generate_dir else generate_dir_beside(path)
    table = merge_parts(arrays, generate)
    logger.info(
        "read %d samples of %d identities from %d parts", len(table), table.n_groups, len(parts)
    )
    return table


def read_parts_distributed(
    parts: Sequence[str | Path],
    embedders: Sequence[str],
    *,
    workers: int = 2,
    client=None,
    generate_dir: str | Path | None = None,
) -> SampleTable:
    """Read many embed parts in parallel on Dask and merge them (for metrics over many parts)."""
    own = client is None
    if client is None:
        from facefoundry.faces.embed_stage import local_client

        client = local_client(workers)
    try:
        futures = client.map(
            read_part, [str(p) for p in parts], embedders=list(embedders), pure=False
        )
        arrays = client.gather(futures)
    finally:
        if own:
            cluster = client.cluster
            client.close()
            cluster.close()
    return merge_parts(arrays, Path(generate_dir) if generate_dir else None)
