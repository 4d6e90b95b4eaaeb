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


# Seeds fix each sample's noise, not the model's arithmetic: PyTorch picks CPU kernels by
# batch size (a small convolution runs PyTorch's own kernel alone and oneDNN's in a batch;
# MKL's GEMM rounds a one-row product, such as the time embedding, differently from a
# many-row one), so a sample drawn alone differed from the same sample drawn in a batch in
# the last float bits, and now and then by a grey level. Within one batch shape a row's
# result depends on neither the other rows nor its position, so on CPU every model call
# takes exactly CPU_BATCH samples. (The bits still depend on the torch version, the CPU's
# instruction set and the thread count.)
CPU_BATCH = 8


def fixed_batches(count: int, batch_size: int, device) -> list[tuple[list[int], int]]:
    """Sample indices for each model call, and how many of them are real (the rest repeat
    the last one as padding; drop their outputs). CPU: CPU_BATCH samples per call, whatever
    ``batch_size``, so an image is the same bytes alone, in any chunk and at any batch
    size. CUDA: ``batch_size`` samples, unpadded; its kernels are also chosen by shape, so
    there only the same batch size (a resumed chunk) is promised the same bytes."""
    on_cpu = torch.device(device).type == "cpu"
    size = CPU_BATCH if on_cpu else batch_size
    batches = []
    for start in range(0, count, size):
        real = list(range(start, min(start + size, count)))
        padding = [real[-1]] * (size - len(real)) if on_cpu else []
        batches.append((real + padding, len(real)))
    return batches
