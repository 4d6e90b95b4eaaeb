"""The embed part file format (written by the embed stage, read by the filters): one parquet
row per candidate with a status, detection fields and one fixed-size embedding column per
embedder; each embedder's checksum and size in the schema metadata under ``META_PREFIX``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

STATUS_OK = "ok"
META_PREFIX = "facefoundry.embedder."


def fixed_list(vectors: np.ndarray) -> pa.FixedSizeListArray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.array(vectors.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
