"""The evaluate stage's cost on real LFW: one pass over DevTest + View 2, one thread a worker.

Usage: python benchmarks/bench_evaluate.py [--model runs/demo/train/model.onnx] [--repeats 3]
Three ways to score one recognizer on LFW DevTest and View 2, 2 workers, same run:
  before:      a pass per pair set, each worker's onnxruntime with a thread per core
               (what the stage did until this bench: workers inherited the parent's
               thread budget);
  per_set:     a pass per pair set, one thread per worker;
  shared_pass: the stage now: the 8,120 distinct images embedded once for both sets.
The quality guard: every way must give the same accuracy on both sets (a faster path
that scores other numbers fails `same_accuracy`). Last line: one JSON object.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import REPO, finish, interleaved, machine, median_spread, save_results  # noqa: I001

SETS = ("devtest", "view2")


def per_set(spec: str, worker_threads: int) -> dict[str, float]:
    """One embedding pass per pair set (the stage before the shared pass)."""
    from facefoundry.evaluation.lfw import Lfw
    from facefoundry.evaluation.protocol import verification_metrics
    from facefoundry.evaluation.verify import embed_lfw_images, load_pairs, score_pairs

    lfw = Lfw()
    accuracy = {}
    for name in SETS:
        pairs = load_pairs(lfw, name)
        names = sorted({n for p in pairs for n in (p.left, p.right)})
        vectors, _ = embed_lfw_images(
            lfw, names, spec, progress=False, worker_threads=worker_threads
        )
        same = np.array([p.same for p in pairs])
        folds = np.array([p.fold for p in pairs])
        accuracy[name] = verification_metrics(score_pairs(vectors, pairs), same, folds)["accuracy"]
    return accuracy


def shared_pass(spec: str) -> dict[str, float]:
    from facefoundry.evaluation.verify import evaluate_lfw_sets

    sets = evaluate_lfw_sets(spec, SETS, progress=False)
    return {name: figures["accuracy"] for name, figures in sets.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(REPO / "runs/demo/train/model.onnx"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = Path(args.model)
    if not model.is_file():
        raise SystemExit(f"{model} does not exist: run `make demo` first or pass --model")
    spec = f"onnx:{model}"
    ways = {
        "before": lambda: per_set(spec, worker_threads=2),
        "per_set": lambda: per_set(spec, worker_threads=1),
        "shared_pass": lambda: shared_pass(spec),
    }
    seconds, accuracy = interleaved(ways, args.repeats)
    figures = {
        "model": str(model),
        "seconds": {name: median_spread(values, 1) for name, values in seconds.items()},
        "accuracy": accuracy,
        "same_accuracy": all(accuracy[name] == accuracy["before"] for name in ways),
    }
    before = figures["seconds"]["before"]["median"]
    for name in ("per_set", "shared_pass"):
        figures[f"{name}_speedup"] = round(before / figures["seconds"][name]["median"], 2)
    figures["machine"] = machine()
    save_results("evaluate", figures)
    finish(figures)


if __name__ == "__main__":
    main()
