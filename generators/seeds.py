"""Per-sample seeds derived from (recipe seed, identity, sample index).

Never from chunk order or worker: the same recipe gives the same bytes however the
work is split, and any single image can be regenerated alone.
"""

from __future__ import annotations

import hashlib

import torch


def sample_seed(recipe_seed: int, identity: int, sample: int, stream: str = "sample") -> int:
    """A stable 63-bit seed; ``stream`` separates uses (initial noise, prompts, ...)."""
    text = f"{stream}:{int(recipe_seed)}:{int(identity)}:{int(sample)}".encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << 63) - 1)


def generators_for(seeds: list[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One torch.Generator per sample, so batching never changes a sample's noise."""
    return [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
