"""The writer's input: one candidate sample as the filter stage decided it."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .layout import check_key


@dataclass(frozen=True, slots=True)
class ShardSample:
    """One candidate sample, kept or rejected.

    Kept samples go into the tar and the manifest; rejected samples only into
    the manifest (with ``reject_reason``), so every candidate has an outcome.

    Attributes:
        key: stable unique id, ``[A-Za-z0-9_-]{1,80}``; see ``shards.make_key``.
        identity: synthetic identity id (>= 0); its class label (contiguous
            0..C-1 over identities with kept samples, ``shards.label_map``)
            is given by the writer and stored as ``{key}.cls``.
        kept: the filter's decision.
        face_jpeg: aligned face, JPEG bytes, RGB, ``face_size`` x ``face_size``
            pixels (112 by default). Required when kept; optional otherwise.
        reject_reason: why the filter rejected it; required when not kept.
        generator, seed, prompt: provenance of the image.
        det_score: detector confidence in 0..1.
        centroid_cos: cosine similarity (not distance) to its identity centroid.
        full_image: optional full generated image, PNG or JPEG bytes.
        metadata: extra JSON-serialisable fields, stored in the sample's .json.
    """

    key: str
    identity: int
    kept: bool
    face_jpeg: bytes | None = None
    reject_reason: str | None = None
    generator: str = ""
    seed: int | None = None
    prompt: str | None = None
    det_score: float | None = None
    centroid_cos: float | None = None
    full_image: bytes | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_key(self.key)
        if isinstance(self.identity, bool) or not isinstance(self.identity, int):
            raise TypeError(f"{self.key}: identity must be an int, got {type(self.identity)}")
        if self.identity < 0:
            raise ValueError(f"{self.key}: identity must be >= 0, got {self.identity}")
        if self.kept:
            if not self.face_jpeg:
                raise ValueError(f"{self.key}: a kept sample needs face_jpeg bytes")
            if self.reject_reason is not None:
                raise ValueError(f"{self.key}: a kept sample cannot have a reject_reason")
        elif not self.reject_reason:
            raise ValueError(f"{self.key}: a rejected sample needs a reject_reason")
        for name in ("det_score", "centroid_cos"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{self.key}: {name} must be finite or None, got {value}")
