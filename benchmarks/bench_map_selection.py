"""How many identities the demo keeps without probes, by realisation map: real runs.

Issue 16, session 49 (target: >= 90 of 100 identities kept by the demo's filter without
probes). For each map and recipe seed, the demo's recipe runs through its filter stage
with the probe funnel off (``identities.probe=null``), so the identities are the 100 of
``pool`` x 100 drawn that the map predicts apart (``identities.select: predicted``) and
nothing is generated before bulk generation. A map is a ``realisation_map.npz`` placed in
a copy of the model folder (the map is not part of the model's checksum, so every copy
draws the same faces for the same identity); ``drawn`` is no selection (the first 100
drawn, what the model does on its own). Per run: identities kept by the filter (SFace,
FMR 1e-4 calibrated on real LFW people) and how many of them dlib, which neither the
model nor any map saw, tells apart at its own FMR 1e-4 threshold.

With ``--probes N`` the probe funnel is on instead: N candidates per wanted identity are
chosen from the pool by the map, probed (a few samples each) and the most separable are
kept (``--probe-select``); the 1,000-identity funnel (session 51) is measured this way.
Per run also: images generated (probe samples plus bulk samples not copied from a probe)
and the probe funnel's separation.

Usage: python benchmarks/bench_map_selection.py --out runs/s49/maps-demo
    --map shipped=models/idiff-face-lfw/realisation_map.npz --map drawn
    --map other=OTHER_MAP.npz [--seeds 2 3 4] [--count 100] [--pool 4]
    [--probes 3 --probe-select largest] [--tau 0.38]
(session 49 compared the then shipped ridge map with ``runs/s49/maps/residual.npz``, which
is the shipped map since session 50.)
Last line: one JSON object (per map: kept and dlib-distinct per seed, median and spread).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import REPO, finish, machine, median_spread, save_results

DRAWN = "drawn"


def model_with_map(model: Path, realisation: Path, folder: Path) -> Path:
    """A copy of ``model`` whose realisation map is ``realisation``."""
    from facefoundry.generators.realisation import REALISATION_FILE

    if folder.exists():
        shutil.rmtree(folder)
    shutil.copytree(model, folder)
    shutil.copyfile(realisation, folder / REALISATION_FILE)
    return folder


def run_demo(recipe: Path, out: Path, overrides: list[str]) -> float:
    """Seconds the demo's recipe took through its filter stage (the CLI, as a user runs it)."""
    command = [sys.executable, "-m", "facefoundry.flows.cli", "run", str(recipe)]
    command += ["--out", str(out), "--stop-after", "filter", "--no-prefect"]
    for override in overrides:
        command += ["--set", override]
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=REPO)  # recipe paths
    return time.perf_counter() - started


def images_generated(run: Path, count: int) -> int:
    """Images the run drew: probe samples, plus bulk samples not copied from a probe."""
    recipe = yaml.safe_load((run / "recipe.resolved.yaml").read_text())
    per_identity = recipe["generate"]["samples_per_identity"]
    probe = recipe["identities"]["probe"]
    if probe is None:
        return count * per_identity
    funnel = json.loads((run / "identities" / "probe_funnel.json").read_text())
    copied = probe["samples"] if probe["condition"] == "original" else 0
    return funnel["probed"] * probe["samples"] + count * (per_identity - copied)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the runs")
    parser.add_argument(
        "--map",
        action="append",
        required=True,
        metavar="NAME=FILE|drawn",
        help="a realisation map to select by, or 'drawn' for no selection (repeatable)",
    )
    parser.add_argument("--recipe", type=Path, default=REPO / "recipes" / "demo.yaml")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "idiff-face-lfw")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--pool", type=float, default=4.0)
    parser.add_argument(
        "--probes",
        type=float,
        default=0.0,
        metavar="N",
        help="candidates probed per wanted identity (0: probe funnel off, the default)",
    )
    parser.add_argument(
        "--probe-select",
        default="largest",
        help="how the probe funnel picks among probed candidates (identities.probe.select)",
    )
    parser.add_argument("--tau", type=float, help="identities.tau (the demo's own if unset)")
    parser.add_argument("--name", default="bench_map_selection")
    args = parser.parse_args()
    args.out = args.out.resolve()
    started = time.perf_counter()
    rows: dict = {}
    for spec in args.map:
        name, _, path = spec.partition("=")
        base = [f"identities.count={args.count}", f"identities.pool={args.pool}"]
        if args.probes > 0:
            base += [
                f"identities.probe.candidates={args.probes}",
                f"identities.probe.select={args.probe_select}",
            ]
        else:
            base.append("identities.probe=null")
        if args.tau is not None:
            base.append(f"identities.tau={args.tau}")
        if name == DRAWN:
            base.append("identities.select=drawn")
        else:
            folder = model_with_map(args.model, Path(path).resolve(), args.out / "models" / name)
            base += ["identities.select=predicted", f"generate.model={folder}"]
        runs = []
        for seed in args.seeds:
            out = args.out / f"{name}-s{seed}"
            seconds = run_demo(args.recipe, out, [*base, f"seed={seed}"])
            (run,) = [p for p in out.iterdir() if (p / "filter" / "metrics.json").is_file()]
            metrics = json.loads((run / "filter" / "metrics.json").read_text())
            funnel = run / "identities" / "probe_funnel.json"
            runs.append(
                {
                    "seed": seed,
                    "kept": metrics["funnel"]["identities"]["kept"],
                    "dlib_distinct": metrics["judge_distinct"]["distinct_identities"],
                    "kept_samples": metrics["funnel"]["samples"]["kept"],
                    "images": images_generated(run, args.count),
                    "separation": (
                        json.loads(funnel.read_text())["separation"] if funnel.is_file() else None
                    ),
                    "seconds": round(seconds, 1),
                }
            )
            print(name, runs[-1], flush=True)
        rows[name] = {
            "map": path or None,
            "runs": runs,
            "kept": median_spread([r["kept"] for r in runs], digits=1),
            "dlib_distinct": median_spread([r["dlib_distinct"] for r in runs], digits=1),
            "images": median_spread([r["images"] for r in runs], digits=0),
        }
    figures = {
        "bench": "map_selection",
        "machine": machine(),
        "recipe": str(args.recipe),
        "count": args.count,
        "pool": args.pool,
        "probes": args.probes,
        "probe_select": args.probe_select if args.probes > 0 else None,
        "tau": args.tau,
        "seeds": args.seeds,
        "maps": rows,
        "kept_median": {name: row["kept"]["median"] for name, row in rows.items()},
        "seconds": round(time.perf_counter() - started, 1),
    }
    save_results(args.name, figures)
    finish(figures)


if __name__ == "__main__":
    main()
