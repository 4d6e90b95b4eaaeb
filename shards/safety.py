"""What a reader refuses in a tar, and why, in one place.

A shard is data from elsewhere: a member named ``/etc/x`` or ``../x`` escapes
the target directory when someone extracts it, a link points outside it, a
device or FIFO blocks a reader, and a huge member exhausts memory. Readers
(streaming, random access, verify) call these checks on every member header
before reading its data.
"""

from __future__ import annotations

from .errors import UnsafeTarError

DEFAULT_MAX_MEMBER_BYTES = 64 * 2**20

REGULAR_TYPES = frozenset({b"0", b"\0", b"7"})
TYPE_NAMES = {
    b"1": "hard link",
    b"2": "symbolic link",
    b"3": "character device",
    b"4": "block device",
    b"5": "directory",
    b"6": "FIFO",
    b"S": "sparse file",
    b"K": "GNU long link name",
    b"V": "volume header",
    b"M": "multi-volume continuation",
}


def check_member_name(name: str, source: str) -> None:
    """Refuse empty, absolute, drive-letter and ``..`` member names."""
    if not name or "\0" in name:
        raise UnsafeTarError(f"{source}: refusing member with an empty or NUL-containing name")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":"):
        raise UnsafeTarError(f"{source}: refusing member {name!r}: absolute path")
    if ".." in unified.split("/"):
        raise UnsafeTarError(f"{source}: refusing member {name!r}: '..' path component")


def check_member_type(typeflag: bytes, name: str, source: str) -> None:
    """Refuse anything that is not a regular file (links, directories, devices, FIFOs)."""
    if typeflag not in REGULAR_TYPES:
        kind = TYPE_NAMES.get(typeflag, f"entry of unknown type {typeflag!r}")
        raise UnsafeTarError(
            f"{source}: refusing member {name!r}: it is a {kind}; only regular files are allowed"
        )


def check_member_size(size: int, limit: int, name: str, source: str) -> None:
    """Refuse members larger than ``limit`` bytes before reading them."""
    if size > limit:
        raise UnsafeTarError(
            f"{source}: refusing member {name!r}: {size} bytes exceeds the limit of {limit} bytes "
            "(raise max_member_bytes if this is expected)"
        )
