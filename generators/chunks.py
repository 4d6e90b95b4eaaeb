"""Writing one generation chunk: the contract every generator family shares.

``part-NNNNN.tar`` holds ``{key}.jpg`` + ``{key}.json`` per sample; side tables (e.g. the
multi-ID rejects) come next; ``part-NNNNN.parquet`` (one row per sample) is written last,
so a chunk is complete exactly when its parquet exists and a killed chunk is redone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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

    partial = path.with_name(path.name + ".partial")
    pq.write_table(table, partial)
    partial.replace(path)


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

    from facefoundry.shards.atomic import atomic_open
    from facefoundry.shards.images import encode_face_jpeg
    from facefoundry.shards.tarformat import encode_members

    members = []
    for row, image in zip(rows, images, strict=True):
        members.append((f"{row['key']}.jpg".encode(), encode_face_jpeg(image, jpeg_quality)))
        members.append((f"{row['key']}.json".encode(), json.dumps(row, sort_keys=True).encode()))
    with atomic_open(tar_path) as handle:
        handle.write(encode_members(members))
    for side_table, path in side_tables:
        write_parquet_atomically(side_table, path)
    write_parquet_atomically(
        table if table is not None else pa.Table.from_pylist(rows), parquet_path
    )
    return parquet_path
