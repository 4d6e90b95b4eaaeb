"""Canonical JSON for shard metadata, written through ``facefoundry.atomic`` (write a
temporary, fsync, rename: a file appears under its final name only when complete)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from facefoundry.atomic import atomic_open, fsync_dir, remove_stale_tmp, tmp_path_for

__all__ = [
    "atomic_open",
    "canonical_json",
    "fsync_dir",
    "read_json",
    "remove_stale_tmp",
    "tmp_path_for",
    "write_json_atomic",
]


def canonical_json(obj: Any) -> bytes:
    """Sorted keys, two-space indent, no NaN, trailing newline: same object, same bytes."""
    return (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")


def write_json_atomic(final: Path, obj: Any, *, fsync: bool = True) -> Path:
    """Write ``obj`` as canonical JSON to ``final`` atomically."""
    data = canonical_json(obj)
    with atomic_open(final, fsync=fsync) as f:
        f.write(data)
    return final


def read_json(path: Path) -> Any:
    with open(path, "rb") as f:
        return json.load(f)
