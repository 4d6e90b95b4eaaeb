"""Write-then-rename: a file appears under its final name only when it is complete.

Every stage writes its outputs through these helpers. A writer writes
``NAME.tmp-PID``, flushes and fsyncs it, renames it to ``NAME`` (atomic on POSIX within
one directory) and fsyncs the directory so the rename itself survives a crash. A killed
writer leaves only ``*.tmp-*`` files, which the next writer of the same name removes.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


def tmp_path_for(final: Path) -> Path:
    """The temporary name this process uses while writing ``final`` (no reader that
    globs ``*.tar`` or ``*.parquet`` ever sees it; give format-by-extension writers such
    as PIL an explicit format)."""
    final = Path(final)
    return final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}")


def remove_stale_tmp(final: Path) -> None:
    """Delete temporary files that killed writers left for ``final``."""
    final = Path(final)
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


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(final: str | Path, *, fsync: bool = True) -> Iterator[Path]:
    """A temporary path for ``final`` to give a library that writes files itself
    (parquet, safetensors, PNG, ONNX); moved into place only if the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(final)
    tmp = tmp_path_for(final)
    try:
        yield tmp
        if fsync:
            fsync_file(tmp)
        os.replace(tmp, final)
        if fsync:
            fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(final: str | Path, *, fsync: bool = True) -> Iterator[IO[bytes]]:
    """Open a temporary file for ``final``; rename it into place only if the block succeeds."""
    with atomic_path(final, fsync=False) as tmp:
        with open(tmp, "wb") as handle:
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
    if fsync:
        fsync_dir(Path(final).parent)


def write_bytes_atomic(final: str | Path, data: bytes, *, fsync: bool = True) -> Path:
    with atomic_open(final, fsync=fsync) as handle:
        handle.write(data)
    return Path(final)


def write_text_atomic(final: str | Path, text: str, *, fsync: bool = True) -> Path:
    return write_bytes_atomic(final, text.encode("utf-8"), fsync=fsync)


def write_json_atomic(final: str | Path, obj: Any, *, indent: int | None = 1, **kwargs) -> Path:
    """``obj`` as JSON (``json.dumps`` options in ``kwargs``), written atomically."""
    fsync = kwargs.pop("fsync", True)
    return write_text_atomic(final, json.dumps(obj, indent=indent, **kwargs), fsync=fsync)
