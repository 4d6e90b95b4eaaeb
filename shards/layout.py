"""File names of a shard directory and the identity-block arithmetic.

Block ``b`` holds identities ``b*identities_per_block .. (b+1)*identities_per_block-1``
and owns shard numbers ``b*shards_per_block .. (b+1)*shards_per_block-1``. Any writer
can therefore name its shards without talking to the others, and one writer
over the whole split produces the very same files as N writers over its blocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from facefoundry.atomic import TMP_MARK

from .settings import ShardSettings

KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,80}$")
SHARD_PATTERN = re.compile(r"^(?P<split>[a-z][a-z0-9_]*)-(?P<number>\d{6})$")
MAX_SHARD_NUMBER = 999_999

DATASET_JSON = "dataset.json"
SIZES_JSON = "sizes.json"
LABELS_JSON = "labels.json"
BLOCKS_DIR = "_blocks"


def make_key(identity: int, sample: int) -> str:
    """The recommended sample key: ``{identity:07d}_{sample:04d}``.

    Zero padding makes string order equal (identity, sample) order, which is
    the order writers require; there is no dot, so webdataset splits member
    names at the extension correctly.
    """
    if not 0 <= identity < 10**7:
        raise ValueError(f"identity {identity} is outside 0..9999999 for the key scheme")
    if not 0 <= sample < 10**4:
        raise ValueError(f"sample index {sample} is outside 0..9999 for the key scheme")
    return f"{identity:07d}_{sample:04d}"


def check_key(key: str) -> str:
    """Raise ValueError unless ``key`` is 1-80 chars of ``[A-Za-z0-9_-]`` (no dots, no '/')."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise ValueError(
            f"sample key {key!r} must be 1-80 characters of A-Z a-z 0-9 _ - "
            "(no dots: webdataset splits names at the first dot); "
            "use shards.make_key(identity, sample)"
        )
    return key


def shard_name(split: str, number: int) -> str:
    """``{split}-{number:06d}``, the stem shared by a shard's tar, parquet and stats."""
    if not 0 <= number <= MAX_SHARD_NUMBER:
        raise ValueError(f"shard number {number} is outside 0..{MAX_SHARD_NUMBER}")
    return f"{split}-{number:06d}"


def parse_shard_name(stem: str) -> tuple[str, int] | None:
    """(split, number) of a shard stem, or None when ``stem`` is not a shard name."""
    match = SHARD_PATTERN.match(stem)
    if match is None:
        return None
    return match.group("split"), int(match.group("number"))


def block_of(identity: int, settings: ShardSettings) -> int:
    """The block an identity id belongs to."""
    if identity < 0:
        raise ValueError(f"identity ids must be >= 0, got {identity}")
    return identity // settings.identities_per_block


def block_identity_range(block: int, settings: ShardSettings) -> range:
    """Identity ids of ``block`` (half-open range)."""
    start = block * settings.identities_per_block
    return range(start, start + settings.identities_per_block)


def block_shard_numbers(block: int, settings: ShardSettings) -> range:
    """Shard numbers reserved for ``block``."""
    start = block * settings.shards_per_block
    numbers = range(start, start + settings.shards_per_block)
    if numbers.stop - 1 > MAX_SHARD_NUMBER:
        raise ValueError(
            f"block {block} would own shard numbers up to {numbers.stop - 1} > {MAX_SHARD_NUMBER}; "
            "raise identities_per_block or lower shards_per_block"
        )
    return numbers


def identity_blocks(identities: Iterable[int], settings: ShardSettings) -> list[int]:
    """Sorted distinct blocks that hold the given identity ids: one writer task each."""
    return sorted({block_of(int(i), settings) for i in identities})


def tar_path(directory: Path, stem: str) -> Path:
    return directory / f"{stem}.tar"


def manifest_path(directory: Path, stem: str) -> Path:
    return directory / f"{stem}.parquet"


def stats_path(directory: Path, stem: str) -> Path:
    return directory / f"{stem}_stats.json"


def index_path(directory: Path, split: str) -> Path:
    """The wids index of one split: ``{split}.index.json``."""
    return directory / f"{split}.index.json"


def block_marker_path(directory: Path, split: str, block: int) -> Path:
    """Written when every shard of a block is complete: ``_blocks/{split}-{block:06d}.json``."""
    return directory / BLOCKS_DIR / f"{split}-{block:06d}.json"


def complete_shard_stems(directory: Path, split: str | None = None) -> list[str]:
    """Stems of shards whose stats file exists (the completion marker), sorted."""
    stems = []
    for path in directory.glob("*_stats.json"):
        stem = path.name[: -len("_stats.json")]
        parsed = parse_shard_name(stem)
        if parsed is not None and (split is None or parsed[0] == split):
            stems.append(stem)
    return sorted(stems)


def temporary_files(directory: Path) -> list[Path]:
    """Leftovers of interrupted writers (``*.tmp-*``) in the directory and its block folder."""
    found = list(directory.glob(f"*{TMP_MARK}*"))
    found += list((directory / BLOCKS_DIR).glob(f"*{TMP_MARK}*"))
    return sorted(found)
