"""The embed stage's cost on a run's generated images: one process vs the part shared.

Usage: python benchmarks/bench_embed_stage.py [--run runs/demo] [--repeats 3] [--workers 2]
Three ways to embed every generate part of a run (YuNet + SFace + dlib, the demo's
embedders), same run, interleaved in each repeat:
  before: one call per part in this process (the stage until this bench: on the local
          threads runner its tasks ran one at a time, one thread each);
  sliced: the part in slices of batch_size items, in this process (what every worker
          count now computes);
  shared: the same slices on ``--workers`` spawned processes, pool start and model
          loads included (the stage now).
Quality guards: `same_table` (shared gives exactly the sliced table: statuses, boxes,
vectors) and `max_abs_vs_before` (slicing moves a vector only in float rounding; the
statuses must match). The machine's limit is its core count (`ideal_speedup`).
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
from common import REPO, finish, interleaved, machine, median_spread, save_results  # noqa: I001

EMBEDDERS = ["sface", "dlib"]
OPTIONS = {"policy": "central", "no_face": "reject", "batch_size": 64}
COMPARED = ("det_score", "embedding_sface", "embedding_dlib")


def parts_of(run: Path, limit: int | None) -> list[list]:
    from facefoundry.faces.embed_stage import Partition, partition_items

    tars = sorted((run / "generate").glob("part-*.tar"))[:limit]
    if not tars:
        raise SystemExit(f"no generate parts in {run}: run `make demo` first or pass --run")
    return [partition_items(Partition(tar.stem, source=str(tar))) for tar in tars]


def before(parts: list[list]) -> list:
    from facefoundry.faces.embed_stage import embed_items, worker_models

    detector, models = worker_models("yunet", EMBEDDERS)
    return [embed_items(items, detector, models, **OPTIONS) for items in parts]


def sliced(parts: list[list], workers: int) -> list:
    from facefoundry.faces import embed_stage

    embed_stage.close_pools()  # a fresh pool: its start is part of the cost
    return [
        embed_stage.embed_items_parallel(items, "yunet", EMBEDDERS, workers, **OPTIONS)
        for items in parts
    ]


def column_list(tables: list, name: str) -> list:
    return [v for t in tables for v in t.column(name).to_pylist()]


def column(tables: list, name: str) -> np.ndarray:
    return np.array(column_list(tables, name), dtype=float)


def same_table(left: list, right: list) -> bool:
    for name in ("key", "status", "error", "box", "landmarks"):
        if column_list(left, name) != column_list(right, name):
            return False
    return all(np.array_equal(column(left, n), column(right, n), equal_nan=True) for n in COMPARED)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", default=str(REPO / "runs/demo"), help="a run folder")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parts", type=int, default=None, help="only the first N parts")
    args = parser.parse_args()
    parts = parts_of(Path(args.run), args.parts)
    images = sum(len(items) for items in parts)
    before(parts[:1])  # load this process's models before timing (the pool pays its own)
    ways = {
        "before": lambda: before(parts),
        "sliced": lambda: sliced(parts, 1),
        "shared": lambda: sliced(parts, args.workers),
    }
    seconds, tables = interleaved(ways, args.repeats)
    statuses_match = column_list(tables["before"], "status") == column_list(
        tables["sliced"], "status"
    )
    gaps = [
        np.nanmax(np.abs(column(tables["before"], n) - column(tables["sliced"], n)))
        for n in COMPARED
    ]
    figures = {
        "run": args.run,
        "parts": len(parts),
        "images": images,
        "workers": args.workers,
        "seconds": {name: median_spread(values, 1) for name, values in seconds.items()},
        "same_table": same_table(tables["shared"], tables["sliced"]),
        "statuses_match_before": statuses_match,
        "max_abs_vs_before": float(max(gaps)),
        "ideal_speedup": min(args.workers, len(os.sched_getaffinity(0))),
    }
    base = figures["seconds"]["before"]["median"]
    for name in ("sliced", "shared"):
        figures[f"{name}_speedup"] = round(base / figures["seconds"][name]["median"], 2)
    figures["img_per_s"] = {
        name: round(images / figures["seconds"][name]["median"], 2) for name in ways
    }
    figures["machine"] = machine()
    save_results("embed_stage", figures)
    finish(figures)


if __name__ == "__main__":
    main()
