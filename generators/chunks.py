"""Writing one generation chunk: the contract every generator family shares.

``part-NNNNN.tar`` holds ``{key}.jpg`` + ``{key}.json`` per sample; side tables (e.g. the
multi-ID rejects) come next; ``part-NNNNN.parquet`` (one row per sample) is written last,
so a chunk is complete exactly when its parquet exists and a killed chunk is redone.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from facefoundry.atomic import atomic_path


def chunk_identities(
    identities_path: str | Path, identity_ids: list[int], id_dim: int | None = None
):
    """The identity table and each id's row, checked: every id present and, when
    ``id_dim`` is given, embeddings of the size the generator expects."""
    from facefoundry.generators.identities import IdentityTable

    table = IdentityTable.load(identities_path)
    position = {int(i): row for row, i in enumerate(table.ids)}
    missing = [i for i in identity_ids if int(i) not in position]
    if missing:
        raise KeyError(f"identities {missing[:5]} are not in {identities_path}")
    if id_dim is not None and table.embeddings.shape[1] != id_dim:
        raise ValueError(
            f"{identities_path} holds {table.embeddings.shape[1]}-d identities but the "
            f"generator expects {id_dim}-d"
        )
    return table, position


def write_parquet_atomically(table, path: Path) -> None:
    import pyarrow.parquet as pq

    with atomic_path(path) as partial:
        pq.write_table(table, partial)


def write_chunk(
    tar_path: Path,
    parquet_path: Path,
    rows: list[dict],
    images: list[np.ndarray] | np.ndarray,
    jpeg_quality: int,
    table=None,
    side_tables: tuple = (),
) -> Path:
    """Tar of images + row JSON, then ``side_tables`` ((table, path), ...), then the
    sample parquet (``table`` or one built from ``rows``)."""
    import pyarrow as pa

    from facefoundry.atomic import atomic_open
    from facefoundry.shards.images import encode_face_jpeg
    from facefoundry.shards.tarformat import archive_end, encode_members

    members = []
    for row, image in zip(rows, images, strict=True):  # bytes: a JPEG copied as it is
        data = image if isinstance(image, bytes) else encode_face_jpeg(image, jpeg_quality)
        members.append((f"{row['key']}.jpg".encode(), data))
        members.append((f"{row['key']}.json".encode(), json.dumps(row, sort_keys=True).encode()))
    body = encode_members(members)
    with atomic_open(tar_path) as handle:
        handle.write(body + archive_end(len(body)))  # a complete tar, even when empty
    for side_table, path in side_tables:
        write_parquet_atomically(side_table, path)
    write_parquet_atomically(
        table if table is not None else pa.Table.from_pylist(rows), parquet_path
    )
    return parquet_path


def drawn_samples(folder: str | Path, rows: list[dict], fields: tuple[str, ...]) -> dict:
    """{key: JPEG bytes} of the ``rows`` already drawn in ``folder``'s complete chunks
    (their parquet written), where every one of ``fields`` matches the row."""
    import tarfile

    import pyarrow.parquet as pq

    wanted = {row["key"]: tuple(row[f] for f in fields) for row in rows}
    found: dict[str, bytes] = {}
    for parquet in sorted(Path(folder).glob("part-*.parquet")):
        if not set(fields) <= set(pq.read_schema(parquet).names):
            continue
        table = pq.read_table(parquet, columns=list(fields)).to_pylist()
        keys = {r["key"] for r in table if wanted.get(r["key"]) == tuple(r[f] for f in fields)}
        if not keys:
            continue
        with tarfile.open(parquet.with_suffix(".tar")) as archive:
            for member in archive:
                stem = member.name.rpartition(".")[0]
                if member.name.endswith(".jpg") and stem in keys:
                    found[stem] = archive.extractfile(member).read()
    return found


def folder_checksum(folder: str | Path) -> str:
    """SHA-256 over the model's weights and JSON configs (sorted by path): what decides the
    images, for any generator folder. Training logs (JSON with ``history`` in the name:
    ``loss_history.json``, ``loss_history_identity_finetune.json``) and pictures do not
    count, so adding or rewriting a log never changes a sample's metadata."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        relevant = path.suffix == ".safetensors" or (
            path.suffix == ".json" and "history" not in path.stem
        )
        if path.is_file() and relevant:
            digest.update(path.relative_to(folder).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()
