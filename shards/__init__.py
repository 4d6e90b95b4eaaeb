"""facefoundry shards: the dataset product (webdataset tars + parquet manifests).

Public names (imported lazily, so writers do not pay for torch/webdataset):

Writing
    ShardSettings, ShardSample, make_key, encode_face_jpeg,
    write_split, write_block, identity_blocks, block_of, label_map, BlockResult,
    SplitResult, finalize
Reading
    stream_dataset, make_loader, face_to_float, decode_face, shard_urls,
    IndexedShards, load_labels, read_manifests, manifests_dask
Checking
    verify_dataset, Problem, dataset_stats, format_stats
Errors
    ShardError, EmptyDatasetError, SampleOrderError, ResumeMismatchError,
    UnsafeTarError, FinalizeError

This package is a leaf: it imports no other facefoundry stage package.
"""

from __future__ import annotations

if __name__ != "facefoundry.shards":  # one import name, never two copies of a module
    raise ImportError("this package is installed as facefoundry.shards: import that")

from facefoundry._lazy import lazy_exports

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
    "label_map": "labels",
    "finalize": "finalize",
    "stream_dataset": "reader",
    "make_loader": "reader",
    "face_to_float": "reader",
    "decode_face": "decode",
    "shard_urls": "reader",
    "IndexedShards": "index",
    "load_labels": "labels",
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
    "DamagedShardError": "errors",
    "FinalizeError": "errors",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
