"""Batch-invariant CPU sampling: the same image bytes alone, in any batch, at any batch size,
and what it costs.

On CPU, PyTorch picks kernels by batch shape (oneDNN vs its own convolution, MKL GEMM
paths), so before the fix a sample drawn alone differed from the same sample drawn in
a batch. Sampling now runs every model call at ``generators.seeds.CPU_BATCH`` samples
(padding the last call). This script draws the same 64 identities with the default
model three ways and compares bytes, then times fixed micro-batches against one call
per requested batch (the old way), interleaved, ``--repeats`` times each.

Last line: JSON with ``identical_alone_vs_batch``, ``identical_across_batch_sizes``,
``max_abs_diff_old_way`` (how far the old way's batch-of-64 images were from the same
images drawn alone), ``img_per_s_fixed`` / ``img_per_s_old`` (median, min-max) and
``speed_ratio`` (fixed over old; < 1 means the fix costs speed).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from common import REPO, finish, machine, median_spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="16 images, 6 steps, 2 repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    import torch

    import facefoundry.generators.seeds as seeds
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline

    torch.set_num_threads(args.threads)
    default = seeds.CPU_BATCH
    count, steps = (16, 6) if args.quick else (64, 25)
    repeats = 2 if args.quick else args.repeats
    model = REPO / "models" / "idiff-face-lfw"
    pipeline = IDiffFacePipeline.from_pretrained(model, "dpmsolver++", device="cpu")
    rng = np.random.default_rng(0)
    identities = rng.standard_normal((count, 128)).astype(np.float32)
    identities /= np.linalg.norm(identities, axis=1, keepdims=True)
    sample_seeds = list(range(1000, 1000 + count))

    def draw(batch_size: int, fixed: bool) -> np.ndarray:
        seeds.CPU_BATCH = default if fixed else batch_size
        return pipeline(
            identities, sample_seeds, steps=steps, guidance_scale=3.0, batch_size=batch_size
        )

    batched = draw(count, fixed=True)
    alone = np.concatenate([
        pipeline(identities[i : i + 1], sample_seeds[i : i + 1], steps=steps, guidance_scale=3.0, batch_size=1)
        for i in range(4)
    ])  # fmt: skip
    identical_alone = bool(np.array_equal(alone, batched[:4]))
    identical_sizes = bool(np.array_equal(draw(5, fixed=True), batched))
    old_batch = draw(count, fixed=False)  # the old way: one model call of the whole batch
    seeds.CPU_BATCH = 1
    old_alone = np.concatenate([
        pipeline(identities[i : i + 1], sample_seeds[i : i + 1], steps=steps, guidance_scale=3.0, batch_size=1)
        for i in range(4)
    ])  # fmt: skip
    max_diff = int(np.abs(old_batch[:4].astype(int) - old_alone.astype(int)).max())

    rates: dict[str, list[float]] = {"fixed": [], "old": []}
    for _ in range(repeats):
        for name in ("fixed", "old"):
            started = time.perf_counter()
            draw(count, fixed=name == "fixed")
            rates[name].append(count / (time.perf_counter() - started))
    seeds.CPU_BATCH = default
    fixed, old = median_spread(rates["fixed"]), median_spread(rates["old"])
    ratios = [f / o for f, o in zip(rates["fixed"], rates["old"], strict=True)]
    finish(
        {
            "benchmark": "batch_invariance",
            "images": count,
            "steps": steps,
            "threads": args.threads,
            "cpu_batch": default,
            "identical_alone_vs_batch": identical_alone,
            "identical_across_batch_sizes": identical_sizes,
            "max_abs_diff_old_way": max_diff,
            "img_per_s_fixed": fixed,
            "img_per_s_old": old,
            "speed_ratio": median_spread(ratios),
            "machine": machine(),
        }
    )


if __name__ == "__main__":
    main()
