"""Write-then-rename helpers: a file appears under its final name only when complete.

A writer writes ``NAME.tmp-PID``, flushes and fsyncs it, renames it to ``NAME``
(atomic on POSIX within one directory) and fsyncs the directory so the rename
itself survives a crash. A killed writer leaves only ``*.tmp-*`` files, which
the next writer of the same name removes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .layout import TMP_MARK

logger = logging.getLogger(__name__)


def tmp_path_for(final: Path) -> Path:
    """The temporary name this process uses while writing ``final``."""
    return final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}")


def remove_stale_tmp(final: Path) -> None:
    """Delete temporary files that killed writers left for ``final``."""
    for path in final.parent.glob(f"{final.name}{TMP_MARK}*"):
        logger.info("removing leftover %s", path)
        path.unlink(missing_ok=True)


def fsync_dir(directory: Path) -> None:
    """fsync a directory so renames inside it are durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_open(final: Path, *, fsync: bool = True) -> Iterator[IO[bytes]]:
    """Open a temporary file for ``final``; rename it into place only if the block succeeds."""
    remove_stale_tmp(final)
    tmp = tmp_path_for(final)
    f = open(tmp, "wb")  # closed below on every path
    try:
        yield f
        f.flush()
        if fsync:
            os.fsync(f.fileno())
        f.close()
        os.replace(tmp, final)
        if fsync:
            fsync_dir(final.parent)
    except BaseException:
        f.close()
        tmp.unlink(missing_ok=True)
        raise


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
