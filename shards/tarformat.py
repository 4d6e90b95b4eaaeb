"""A small USTAR writer and a checked member reader.

The writer emits exactly what ``tarfile`` writes for a regular file with
``mtime=0``, mode 0444, uid/gid 0 and owner ``bigdata`` (webdataset's
defaults), including the end-of-archive blocks and padding to a 10240-byte
record, but builds each header from a template instead of going through
``TarInfo``: the same bytes at a lower cost per member.

The reader parses headers itself so that every member passes the safety
checks in ``shards.safety`` before its data is read; it understands USTAR,
PAX ('x'/'g') and GNU long names ('L'), and refuses every other entry type.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from .errors import UnsafeTarError
from .safety import check_member_name, check_member_size, check_member_type

BLOCK = 512
RECORD = 20 * BLOCK
ZERO_BLOCK = bytes(BLOCK)
TAR_USER = "bigdata"
TAR_MODE = 0o444


def _template() -> tuple[bytes, int]:
    info = tarfile.TarInfo("")
    info.size = 0
    info.mtime = 0
    info.mode = TAR_MODE
    info.uname = TAR_USER
    info.gname = TAR_USER
    header = bytearray(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"))
    header[148:156] = b" " * 8
    return bytes(header), sum(header) - sum(header[124:136])


_HEADER, _HEADER_SUM = _template()


def ustar_header(name: bytes, size: int) -> bytes:
    """The 512-byte header ``tarfile`` writes for a regular file ``name`` of ``size`` bytes."""
    if len(name) > 100:
        raise ValueError(f"member name {name!r} is longer than 100 bytes (USTAR limit)")
    if size >= 8**11:
        raise ValueError(f"member {name!r} of {size} bytes is too large for a USTAR header")
    header = bytearray(_HEADER)
    header[: len(name)] = name
    size_field = b"%011o\0" % size
    header[124:136] = size_field
    header[148:156] = b"%06o\0 " % (_HEADER_SUM + sum(name) + sum(size_field))
    return bytes(header)


def padded(size: int) -> int:
    """``size`` rounded up to whole 512-byte blocks."""
    return (size + BLOCK - 1) & ~(BLOCK - 1)


def member_bytes(size: int) -> int:
    """Bytes one member of ``size`` data bytes takes in the tar (header + padded data)."""
    return BLOCK + padded(size)


def archive_end(offset: int) -> bytes:
    """Two zero blocks plus padding to a full 10240-byte record, as ``tarfile`` closes."""
    end = offset + 2 * BLOCK
    return bytes(2 * BLOCK + (-end % RECORD))


def encode_members(members: list[tuple[bytes, bytes]]) -> bytes:
    """Headers, data and padding of several members, concatenated."""
    parts: list[bytes] = []
    for name, data in members:
        parts.append(ustar_header(name, len(data)))
        parts.append(data)
        pad = -len(data) % BLOCK
        if pad:
            parts.append(bytes(pad))
    return b"".join(parts)


@dataclass(frozen=True, slots=True)
class TarMember:
    """One regular member: its name, where its data starts, its size, and (if read) its data."""

    name: str
    offset: int
    size: int
    data: bytes | None


def _octal(field: bytes, source: str, offset: int) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for large numbers
        value = int.from_bytes(field[1:], "big")
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise UnsafeTarError(f"{source}: corrupt tar header at byte {offset}") from None


def _parse_pax(data: bytes, source: str) -> dict[str, str]:
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise UnsafeTarError(f"{source}: corrupt PAX header") from None
        if length <= 0:
            raise UnsafeTarError(f"{source}: corrupt PAX header")
        record = data[space + 1 : pos + length - 1]
        keyword, _, value = record.partition(b"=")
        records[keyword.decode("utf-8", "replace")] = value.decode("utf-8", "replace")
        pos += length
    return records


def iter_members(
    f: BinaryIO,
    *,
    source: str,
    max_member_bytes: int,
    read_data: bool = True,
    require_end: bool = False,
) -> Iterator[TarMember]:
    """Yield the regular members of a tar stream after checking each one.

    Raises ``UnsafeTarError`` (naming ``source`` and the member) on an unsafe
    name, a non-regular entry, a member over ``max_member_bytes``, a header
    with a bad checksum, or a truncated archive. With ``require_end`` an archive
    that stops without its end-of-archive blocks (cut at a member boundary) is
    truncated too; our writers always write them. With ``read_data=False`` the
    data is skipped with ``seek`` (``f`` must then be seekable).
    """
    offset = 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = f.read(BLOCK)
        if not header:
            if require_end:
                raise UnsafeTarError(
                    f"{source}: truncated tar: it ends at byte {offset} without the "
                    "end-of-archive blocks (cut at a member boundary?)"
                )
            return  # tolerate archives without end blocks
        if len(header) < BLOCK:
            raise UnsafeTarError(f"{source}: truncated tar header at byte {offset}")
        if header == ZERO_BLOCK:
            return
        stored = _octal(header[148:156], source, offset)
        if stored != sum(header[:148]) + 256 + sum(header[156:]):
            raise UnsafeTarError(f"{source}: bad tar header checksum at byte {offset}")
        typeflag = header[156:157]
        size = _octal(header[124:136], source, offset)
        raw_name = header[:100].split(b"\0", 1)[0]
        if header[257:262] == b"ustar":
            prefix = header[345:500].split(b"\0", 1)[0]
            if prefix:
                raw_name = prefix + b"/" + raw_name
        try:
            name = raw_name.decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeTarError(f"{source}: member name {raw_name!r} is not UTF-8") from None
        data_offset = offset + BLOCK
        if typeflag in (b"x", b"g", b"L"):
            check_member_size(size, max_member_bytes, name, source)
            blob = f.read(padded(size))
            if len(blob) < size:
                raise UnsafeTarError(f"{source}: truncated tar data at byte {data_offset}")
            blob = blob[:size]
            if typeflag == b"x":
                pax = _parse_pax(blob, source)
            elif typeflag == b"L":
                long_name = blob.split(b"\0", 1)[0].decode("utf-8", "replace")
            offset = data_offset + padded(size)
            continue
        if long_name is not None:
            name, long_name = long_name, None
        if pax:
            name = pax.get("path", name)
            if "size" in pax:
                size = int(pax["size"])
            pax = {}
        check_member_type(typeflag, name, source)
        check_member_name(name, source)
        check_member_size(size, max_member_bytes, name, source)
        total = padded(size)
        if read_data:
            data = f.read(total)
            if len(data) < size:
                raise UnsafeTarError(f"{source}: truncated data of member {name!r}")
            if total != size:
                data = data[:size]
        else:
            data = None
            f.seek(total, 1)
        yield TarMember(name, data_offset, size, data)
        offset = data_offset + total


def split_name(name: str) -> tuple[str, str]:
    """(key, extension) with webdataset's rule: the extension starts at the basename's first dot."""
    slash = name.rfind("/") + 1
    dot = name.find(".", slash)
    if dot < 0:
        return name, ""
    return name[:dot], name[dot + 1 :]


def iter_samples(
    f: BinaryIO, *, source: str, max_member_bytes: int, require_end: bool = False
) -> Iterator[dict[str, bytes | str]]:
    """Group consecutive members with the same key into webdataset sample dicts.

    Each dict has ``__key__`` and one entry per extension (lower case), data as
    bytes. Members without an extension are skipped, as webdataset does; a
    repeated extension within one sample raises ``UnsafeTarError``.
    """
    current: dict[str, bytes | str] | None = None
    members = iter_members(
        f, source=source, max_member_bytes=max_member_bytes, require_end=require_end
    )
    for member in members:
        key, ext = split_name(member.name)
        if not ext:
            continue
        ext = ext.lower()
        if current is None or current["__key__"] != key:
            if current is not None:
                yield current
            current = {"__key__": key}
        elif ext in current:
            raise UnsafeTarError(f"{source}: member {member.name!r} appears twice in one sample")
        current[ext] = member.data  # type: ignore[assignment]
    if current is not None:
        yield current
