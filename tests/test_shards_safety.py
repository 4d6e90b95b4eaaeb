"""Readers refuse absolute paths, '..', links, non-regular entries and oversized members."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from facefoundry.shards import (
    IndexedShards,
    ShardSettings,
    UnsafeTarError,
    finalize,
    stream_dataset,
    verify_dataset,
    write_split,
)
from facefoundry.shards.tarformat import iter_samples
from tests.helpers.shards import synthetic_samples


def make_tar(entries: list[tarfile.TarInfo | tuple[str, bytes]], fmt=tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for entry in entries:
            if isinstance(entry, tarfile.TarInfo):
                tf.addfile(entry)
            else:
                name, data = entry
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def entry(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def read_all(data: bytes, limit: int = 1 << 20) -> list[dict]:
    return list(iter_samples(io.BytesIO(data), source="evil.tar", max_member_bytes=limit))


GOOD = ("k.jpg", b"fine")


@pytest.mark.parametrize(
    ("entries", "fmt", "reason"),
    [
        ([GOOD, ("../evil.jpg", b"x")], tarfile.USTAR_FORMAT, "'..' path component"),
        ([("a/../../evil.jpg", b"x")], tarfile.USTAR_FORMAT, "'..' path component"),
        ([("/etc/evil.jpg", b"x")], tarfile.GNU_FORMAT, "absolute path"),
        ([entry("k.jpg", tarfile.SYMTYPE, "/etc/passwd")], tarfile.USTAR_FORMAT, "symbolic link"),
        ([GOOD, entry("k.txt", tarfile.LNKTYPE, "k.jpg")], tarfile.USTAR_FORMAT, "hard link"),
        ([entry("k.dir", tarfile.DIRTYPE)], tarfile.USTAR_FORMAT, "directory"),
        ([("../" + "x" * 120 + ".jpg", b"x")], tarfile.GNU_FORMAT, "'..' path component"),
        ([("../" + "y" * 120 + ".jpg", b"x")], tarfile.PAX_FORMAT, "'..' path component"),
    ],
)
def test_unsafe_members_are_refused(entries, fmt, reason) -> None:
    with pytest.raises(UnsafeTarError, match=reason) as info:
        read_all(make_tar(entries, fmt))
    assert "evil.tar" in str(info.value) and "refusing member" in str(info.value)


def test_fifo_device_and_oversized_members_are_refused() -> None:
    with pytest.raises(UnsafeTarError, match="FIFO"):
        read_all(make_tar([entry("k.fifo", tarfile.FIFOTYPE)]))
    with pytest.raises(UnsafeTarError, match="character device"):
        read_all(make_tar([entry("k.dev", tarfile.CHRTYPE)]))
    with pytest.raises(UnsafeTarError, match="exceeds the limit of 1000 bytes"):
        read_all(make_tar([("k.jpg", bytes(2000))]), limit=1000)


def test_corrupt_header_is_refused() -> None:
    data = bytearray(make_tar([GOOD]))
    data[10] ^= 0x20
    with pytest.raises(UnsafeTarError, match="checksum"):
        read_all(bytes(data))


def test_ordinary_tars_from_other_tools_are_read() -> None:
    data = make_tar(
        [("a/k1.jpg", b"1"), ("a/k1.cls", b"3"), ("ü" * 60 + ".jpg", b"2")], tarfile.PAX_FORMAT
    )
    samples = read_all(data)
    assert [s["__key__"] for s in samples] == ["a/k1", "ü" * 60]
    assert samples[0]["cls"] == b"3"


@pytest.fixture
def poisoned(tmp_path: Path) -> Path:
    """A finalized dataset whose first shard was swapped for one with a '../' member."""
    directory = tmp_path / "shards"
    write_split(synthetic_samples(range(3), 4, reject_every=0), directory, settings=ShardSettings())
    finalize(directory)
    good = (directory / "train-000000.tar").read_bytes()
    shutil.copy(directory / "train-000000.tar", tmp_path / "good.tar")
    with tarfile.open(tmp_path / "good.tar") as tf:
        members = [(m.name, tf.extractfile(m).read()) for m in tf.getmembers()]
    jpg = next(i for i, (name, _) in enumerate(members) if name.endswith(".jpg"))
    members[jpg] = ("../" + members[jpg][0], members[jpg][1])
    evil = make_tar(members)
    assert len(evil) == len(good)
    (directory / "train-000000.tar").write_bytes(evil)
    return directory


def test_every_reader_refuses_a_traversal_member(poisoned: Path) -> None:
    with pytest.raises(UnsafeTarError, match=r"refusing member '\.\./0000000_0000\.jpg'"):
        list(stream_dataset(poisoned, shuffle=False))
    with pytest.raises(UnsafeTarError, match="'..' path component"):
        IndexedShards(poisoned / "train.index.json")[0]
    problems = [str(p) for p in verify_dataset(poisoned)]
    assert any("unsafe or corrupt tar" in p and "'..'" in p for p in problems)
