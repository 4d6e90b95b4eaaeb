"""facefoundry shards: the dataset product (webdataset tars + parquet manifests).

Public names (imported lazily, so writers do not pay for torch/webdataset):

Writing
    ShardSettings, ShardSample, make_key, encode_face_jpeg,
    write_split, write_block, identity_blocks, block_of, BlockResult, SplitResult,
    finalize
Reading
    stream_dataset, make_loader, face_to_float, decode_face, shard_urls,
    IndexedShards, load_labels, read_manifests, manifests_dask
Checking
    verify_dataset, Problem, dataset_stats, format_stats
Errors
    ShardError, EmptyDatasetError, SampleOrderError, ResumeMismatchError,
    UnsafeTarError, FinalizeError

This package is a leaf: it imports no other facefoundry package.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ShardSettings": "settings",
    "ShardSample": "sample",
    "make_key": "layout",
    "block_of": "layout",
    "identity_blocks": "layout",
    "encode_face_jpeg": "images",
    "write_split": "writer",
    "write_block": "writer",
    "BlockResult": "writer",
    "SplitResult": "writer",
    "finalize": "finalize",
    "stream_dataset": "reader",
    "make_loader": "reader",
    "face_to_float": "reader",
    "decode_face": "reader",
    "shard_urls": "reader",
    "IndexedShards": "index",
    "load_labels": "index",
    "read_manifests": "manifest",
    "manifests_dask": "manifest",
    "verify_dataset": "verify",
    "Problem": "verify",
    "dataset_stats": "stats",
    "format_stats": "stats",
    "ShardError": "errors",
    "EmptyDatasetError": "errors",
    "SampleOrderError": "errors",
    "ResumeMismatchError": "errors",
    "UnsafeTarError": "errors",
    "FinalizeError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'shards' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
