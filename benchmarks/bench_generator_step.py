"""The IDiff-Face fine-tune step on CPU: SFace's PReLU as ONNX's where() vs torch's prelu.

Usage: python benchmarks/bench_generator_step.py [--steps 6] [--repeats 3] [--threads 2]
Two trainers start from the same weights (models/idiff-face-lfw) with issue 16's
fine-tune recipe (identity + contrast terms through the torch SFace, 8 rows), one with
the torch SFace's PReLU written as ONNX's formula where(x >= 0, x, slope x) (before), one
with torch's own prelu (now); blocks of ``--steps`` steps alternate between them.
Quality guard: `same_losses`, the two trainers' loss of every step equal bit for bit
(same values and gradients, so the same training). The machine's limit: its measured
sgemm rate (`peak_gflops`, at ``--threads``) against the step's work (torch's FLOP
counter over one step: convolutions and matmuls, forward and backward).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import REPO, finish, machine, median_spread, peak_gflops, save_results  # noqa: I001

RECIPE = dict(
    identity_weight=0.1,
    identity_contrast_weight=0.02,
    identity_max_rows=8,
    batch_sampling="image",
    learning_rate=3e-4,
    warmup_steps=100,
    seed=6,
)


def where_prelu(x: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
    return torch.where(x >= 0, x, x * slope)


def trainer(data, threads: int, out: str):
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from facefoundry.generators.idiff_face.train import Trainer, TrainSettings

    model = IDiffFaceModel.from_pretrained(REPO / "models/idiff-face-lfw")
    settings = TrainSettings(steps=10_000, threads=threads, **RECIPE)
    return Trainer(model, data, settings, out)


def main() -> None:
    from facefoundry.generators.training_data import FaceTrainingSet
    from facefoundry.recognition import sface_torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO / "data/lfw-devtrain-sface-64.npz"))
    parser.add_argument("--steps", type=int, default=6, help="steps per timed block")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = FaceTrainingSet.load(args.data)
    fast_prelu = sface_torch._prelu
    ways = {
        "before": (where_prelu, trainer(data, args.threads, "/tmp/ff-bench-step-before")),
        "now": (fast_prelu, trainer(data, args.threads, "/tmp/ff-bench-step-now")),
    }
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    losses: dict[str, list[float]] = {name: [] for name in ways}
    for repeat in range(args.repeats + 1):  # the first block warms up and is not timed
        for name, (prelu, fitting) in ways.items():
            sface_torch._prelu = prelu
            started = time.perf_counter()
            losses[name] += [fitting.train_step() for _ in range(args.steps)]
            if repeat:
                seconds[name].append((time.perf_counter() - started) / args.steps)
                print(f"repeat {repeat} {name}: {seconds[name][-1]:.3f} s/step")
    sface_torch._prelu = fast_prelu
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # one more step, counted, not timed
        ways["now"][1].train_step()
    step_gflop = counter.get_total_flops() / 1e9
    figures = {
        "steps_per_block": args.steps,
        "threads": args.threads,
        "seconds_per_step": {name: median_spread(values, 3) for name, values in seconds.items()},
        "same_losses": losses["before"] == losses["now"],
        "last_loss": losses["now"][-1],
        "step_gflop": round(step_gflop, 1),
        "sgemm_gflops": round(peak_gflops(), 1),
    }
    before = figures["seconds_per_step"]["before"]["median"]
    now = figures["seconds_per_step"]["now"]["median"]
    figures["speedup"] = round(before / now, 2)
    figures["achieved_gflops"] = {"before": round(step_gflop / before, 1)}
    figures["achieved_gflops"]["now"] = round(step_gflop / now, 1)
    figures["machine"] = machine()
    save_results("generator_step", figures)
    finish(figures)


if __name__ == "__main__":
    main()
