"""The wids-compatible index document of a split: ``{split}.index.json``.

It follows wids' ``wids-shard-index-v1`` format: a ``shardlist`` of
``{"url", "nsamples", "filesize"}`` with urls relative to the index file, so
``wids.ShardListDataset("DIR/train.index.json")`` works on it directly.
Written by finalize, checked by verify, read by ``index.IndexedShards``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .atomic import write_json_atomic
from .layout import index_path

INDEX_KIND = "wids-shard-index-v1"


def build_index(split: str, shards: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The index document for a split from the shards' stats (``shard``, ``n_kept``, ``tar_bytes``)."""
    return {
        "__kind__": INDEX_KIND,
        "wids_version": 1,
        "name": f"facefoundry-{split}",
        "shardlist": [
            {"url": f"{s['shard']}.tar", "nsamples": s["n_kept"], "filesize": s["tar_bytes"]}
            for s in shards
        ],
    }


def write_index(
    directory: Path, split: str, shards: Sequence[dict[str, Any]], *, fsync: bool
) -> Path:
    """Write ``{split}.index.json`` atomically."""
    return write_json_atomic(index_path(directory, split), build_index(split, shards), fsync=fsync)


__all__ = ["INDEX_KIND", "build_index", "write_index"]
