"""Random access through a split's wids index (``{split}.index.json``, see ``widsindex``).

``IndexedShards`` reads the index without wids: it scans each shard's headers
once (with the safety checks) and then serves any sample by global index with
``os.pread``. ``wids.ShardListDataset`` works on the same index file.
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import Any

from .atomic import read_json
from .decode import decode_face
from .labels import load_labels, sample_label
from .safety import DEFAULT_MAX_MEMBER_BYTES
from .tarformat import iter_members, split_name

logger = logging.getLogger(__name__)


class IndexedShards:
    """Map-style dataset over one split: ``ds[i]`` -> ``(uint8 HWC tensor, label)``.

    Indices run over kept samples in shard order (the index's order). With
    ``decode=False`` items are raw sample dicts (``__key__`` plus one bytes
    entry per extension). Safe to use in forked DataLoader workers: files are
    read with ``pread`` and opened lazily per process.
    """

    def __init__(
        self,
        index: Path | str,
        *,
        decode: bool = True,
        max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    ) -> None:
        index = Path(index)
        if index.is_dir():
            raise IsADirectoryError(f"{index}: pass the index file, e.g. {index}/train.index.json")
        doc = read_json(index)
        if doc.get("wids_version") != 1 or "shardlist" not in doc:
            raise ValueError(f"{index} is not a wids shard index")
        self.root = index.parent
        self.shards = [self.root / s["url"] for s in doc["shardlist"]]
        self.lengths = [int(s["nsamples"]) for s in doc["shardlist"]]
        self.starts: list[int] = []
        total = 0
        for n in self.lengths:
            self.starts.append(total)
            total += n
        self.total = total
        self.decode = decode
        self.max_member_bytes = max_member_bytes
        self._labels: dict[int, int] | None = None  # only for shards without .cls members
        self._members: dict[int, list[tuple[str, list[tuple[str, int, int]]]]] = {}
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self.total

    def _scan(self, shard: int) -> list[tuple[str, list[tuple[str, int, int]]]]:
        """Sample list of one shard: (key, [(ext, data offset, size), ...]); checked once."""
        path = self.shards[shard]
        samples: list[tuple[str, list[tuple[str, int, int]]]] = []
        with open(path, "rb") as f:
            members = iter_members(
                f, source=str(path), max_member_bytes=self.max_member_bytes, read_data=False
            )
            for member in members:
                key, ext = split_name(member.name)
                if not ext:
                    continue
                if not samples or samples[-1][0] != key:
                    samples.append((key, []))
                samples[-1][1].append((ext.lower(), member.offset, member.size))
        if len(samples) != self.lengths[shard]:
            raise ValueError(
                f"{path} holds {len(samples)} samples but the index says {self.lengths[shard]}"
            )
        return samples

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: do not share descriptors with the parent
            self._fds = {}
            self._pid = os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        return fd

    def raw(self, index: int) -> dict[str, Any]:
        """The sample dict at a global index."""
        if index < 0:
            index += self.total
        if not 0 <= index < self.total:
            raise IndexError(f"index {index} out of range for {self.total} samples")
        shard = bisect.bisect_right(self.starts, index) - 1  # empty shards are never chosen
        members = self._members.get(shard)
        if members is None:
            members = self._members[shard] = self._scan(shard)
        key, entries = members[index - self.starts[shard]]
        fd = self._fd(shard)
        sample: dict[str, Any] = {"__key__": key, "__shard__": str(self.shards[shard])}
        for ext, offset, size in entries:
            sample[ext] = os.pread(fd, size, offset)
        return sample

    def __getitem__(self, index: int) -> Any:
        sample = self.raw(index)
        if not self.decode:
            return sample
        if "cls" not in sample and self._labels is None:
            self._labels = load_labels(self.root)
        return decode_face(sample["jpg"]), sample_label(sample, self._labels)

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
