"""Settings of the shard stage (a pydantic model the recipe schema composes)."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field, field_validator

SPLIT_PATTERN = r"^[a-z][a-z0-9_]{0,31}$"


class ShardSettings(BaseModel):
    """How samples are laid out in shards.

    The layout fields (``maxcount``, ``maxsize``, ``identities_per_block``,
    ``shards_per_block``, ``face_size``) decide which sample lands in which
    shard; changing them changes the bytes, and resuming a directory written
    with other layout values raises instead of mixing two layouts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    maxcount: int = Field(10_000, gt=0, description="Most kept samples per tar.")
    maxsize: int = Field(
        1_000_000_000, gt=0, description="Most bytes per tar (a tar may pass it by one sample)."
    )
    splits: tuple[str, ...] = Field(("train",), min_length=1, description="Allowed split names.")
    jpeg_quality: int = Field(
        95, ge=1, le=100, description="Quality used by encode_face_jpeg for faces given as arrays."
    )
    face_size: int = Field(112, gt=0, description="Side of the aligned face JPEG, in pixels.")
    identities_per_block: int = Field(
        1000, gt=0, description="Identity ids per block; a block is the unit of one writer."
    )
    shards_per_block: int = Field(
        100, gt=0, description="Shard numbers reserved per block (block b owns b*n .. b*n+n-1)."
    )
    max_member_bytes: int = Field(
        64 * 2**20, gt=0, description="Largest payload the writer accepts and readers read."
    )
    fsync: bool = Field(True, description="fsync files and directories before each rename.")

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        import re

        for name in value:
            if not re.match(SPLIT_PATTERN, name):
                raise ValueError(
                    f"split name {name!r} must match {SPLIT_PATTERN} (lower case, digits, '_')"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"split names repeat: {value}")
        return value

    def layout(self) -> dict[str, int]:
        """The fields that decide shard contents; stored in every stats file."""
        return {
            "maxcount": self.maxcount,
            "maxsize": self.maxsize,
            "identities_per_block": self.identities_per_block,
            "shards_per_block": self.shards_per_block,
            "face_size": self.face_size,
        }

    def layout_hash(self) -> str:
        """Short sha256 of :meth:`layout`, to detect a resume with other settings."""
        blob = json.dumps(self.layout(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]
