"""Benchmark the demo recipe end to end: Prefect overhead and kill/resume.

    python benchmarks/bench_demo.py [--out /root/ffwork/demo-bench]

Runs ``facefoundry run recipes/demo.yaml`` three ways into OUT (deleted first):
  prefect   under Prefect (a temporary local server starts itself)
  direct    ``--no-prefect`` (the same stage functions called directly)
  killed    ``--no-prefect``, SIGKILLed once 2 generation chunks exist, then rerun
Figures (the last printed line is one JSON object): wall times, per-stage seconds from
``<stage>/_SUCCESS.json``, Prefect overhead, resume savings and whether the resumed
run's shards are byte-identical to the uninterrupted run's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, finish, machine  # noqa: E402

RECIPE = "recipes/demo.yaml"
NAME = "demo"
STAGES = ["identities", "generate", "embed", "filter", "shards", "train", "evaluate", "report"]
CLI = str(REPO / ".venv" / "bin" / "facefoundry")


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def command(out: Path, prefect: bool) -> list[str]:
    return [CLI, "run", RECIPE, "--out", str(out)] + ([] if prefect else ["--no-prefect"])


def timed_run(out: Path, prefect: bool, log: Path) -> float:
    """Run the recipe to completion; return its wall seconds (raises on failure)."""
    started = time.perf_counter()
    with log.open("ab") as sink:
        subprocess.run(command(out, prefect), cwd=REPO, stdout=sink, stderr=sink, check=True)
    return time.perf_counter() - started


def stage_seconds(run_dir: Path) -> dict[str, float | None]:
    seconds: dict[str, float | None] = {}
    for stage in STAGES:
        marker = run_dir / stage / "_SUCCESS.json"
        seconds[stage] = json.loads(marker.read_text()).get("seconds") if marker.exists() else None
    return seconds


def chunks(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "generate").glob("part-*.parquet"))


def digests(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def explain(a: Path, b: Path) -> str:
    """Why two versions of a small text file differ: the first differing line of each."""
    try:
        left, right = a.read_text().splitlines(), b.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return "binary content differs"
    for x, y in zip(left, right, strict=False):
        if x != y:
            return f"direct: {x.strip()[:120]!r} vs killed: {y.strip()[:120]!r}"
    return f"line counts differ ({len(left)} vs {len(right)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("/root/ffwork/demo-bench"))
    args = parser.parse_args()
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "runs.log"
    figures: dict = {"machine": machine(), "loadavg_start": loadavg()}

    # 1-2. Prefect vs direct.
    for mode in ("prefect", "direct"):
        figures[f"loadavg_{mode}_start"] = loadavg()
        wall = timed_run(out / mode, mode == "prefect", log)
        figures[f"loadavg_{mode}_end"] = loadavg()
        seconds = stage_seconds(out / mode / NAME)
        total = sum(s for s in seconds.values() if s is not None)
        figures[f"wall_{mode}_s"] = round(wall, 1)
        figures[f"stage_seconds_{mode}"] = seconds
        figures[f"stage_sum_{mode}_s"] = round(total, 1)
        figures[f"orchestration_{mode}_s"] = round(wall - total, 1)
        print(f"{mode}: wall {wall:.1f}s, stages {seconds}", flush=True)
    wall_p, wall_d = figures["wall_prefect_s"], figures["wall_direct_s"]
    figures["prefect_overhead_pct"] = round(100 * (wall_p - wall_d) / wall_p, 1)

    # 3. Kill after 2 generation chunks, then resume.
    killed = out / "killed" / NAME
    figures["loadavg_killed_start"] = loadavg()
    started = time.perf_counter()
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            command(out / "killed", False),
            cwd=REPO,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
        while len(chunks(killed)) < 2 and proc.poll() is None:
            time.sleep(0.5)
        done_at_kill = chunks(killed)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    figures["killed_after_s"] = round(time.perf_counter() - started, 1)
    figures["chunks_done_at_kill"] = [p.name for p in done_at_kill]
    figures["generate_files_at_kill"] = sorted(p.name for p in (killed / "generate").iterdir())
    mtimes = {p: p.stat().st_mtime_ns for p in done_at_kill}
    mtimes.update(
        {p.with_suffix(".tar"): p.with_suffix(".tar").stat().st_mtime_ns for p in done_at_kill}
    )
    rerun = timed_run(out / "killed", False, log)
    figures["loadavg_killed_end"] = loadavg()
    figures["rerun_wall_s"] = round(rerun, 1)
    figures["stage_seconds_rerun"] = stage_seconds(killed)
    figures["chunks_redone"] = sorted(
        p.name for p, m in mtimes.items() if p.stat().st_mtime_ns != m
    )
    generate_direct = figures["stage_seconds_direct"]["generate"] or 0.0
    figures["generation_seconds_not_redone"] = round(generate_direct * len(done_at_kill) / 4, 1)
    figures["time_saved_s"] = round(wall_d - rerun, 1)
    figures["time_saved_incl_killed_part_s"] = round(
        wall_d - (figures["killed_after_s"] + rerun), 1
    )

    a, b = digests(out / "direct" / NAME / "shards"), digests(killed / "shards")
    figures["shard_files_direct"] = sorted(a)
    figures["shard_files_killed"] = sorted(b)
    differing = [
        {"file": f, "reason": explain(out / "direct" / NAME / "shards" / f, killed / "shards" / f)}
        if f in a and f in b
        else {"file": f, "reason": "present in only one run"}
        for f in sorted(set(a) | set(b))
        if a.get(f) != b.get(f)
    ]
    figures["differing_files"] = differing
    figures["shards_identical"] = not any(
        d["file"].endswith((".tar", ".parquet")) for d in differing
    )
    figures["all_shard_files_identical"] = not differing
    figures["loadavg_end"] = loadavg()
    finish(figures)


if __name__ == "__main__":
    main()
