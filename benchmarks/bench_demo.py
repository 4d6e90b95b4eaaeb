"""Benchmark the demo recipe end to end: Prefect overhead and kill/resume.

    python benchmarks/bench_demo.py [--out /root/ffwork/demo-bench] [--quick]
        [--recipe recipes/demo.yaml] [--set KEY=VALUE ...]

Runs ``facefoundry run RECIPE`` three ways into OUT (deleted first):
  prefect   under Prefect (a temporary local server starts itself, with its own
            PREFECT_HOME under OUT so its database holds this run's task runs only;
            the database is created by an untimed empty flow first)
  direct    ``--no-prefect`` (the same stage functions called directly)
  killed    ``--no-prefect``, SIGKILLed once half the generation chunks exist, then rerun
The chunk count comes from the recipe (the generator family's plan over
identities.count, as the generate stage plans it), not from a constant.
``--quick``: a small variant of the recipe (8 identities x 2 images in 4 chunks,
stopped after the shards stage) that runs in a few minutes.

Prefect overhead counts both places it can hide:
  outside the stages   wall time minus the stages' own seconds (``_SUCCESS.json``),
                       Prefect run minus direct run;
  inside chunked stages  the generate and embed stages' seconds include submitting one
                       Prefect task per chunk, its state changes and collecting its
                       result. Per chunk, the body's own time is known (embed: the part's
                       ``_stats.json`` seconds; generate: from the task run's start in
                       Prefect's database to the chunk's parquet, written last), so the
                       stage seconds minus the time covered by chunk bodies is Prefect's.
                       The direct run's same residual (embed) is the control.
Figures (the last printed line is one JSON object): wall times, per-stage seconds,
``prefect_overhead_s`` / ``prefect_overhead_pct`` (both parts; target < 10%, with
``prefect_overhead_complete`` false when a chunk's timing was missing), per-task
figures, resume savings and whether the resumed run's shards are byte-identical.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, finish, machine  # noqa: E402

RECIPE = "recipes/demo.yaml"
STAGES = ["identities", "generate", "embed", "filter", "shards", "train", "evaluate", "report"]
CLI = str(REPO / ".venv" / "bin" / "facefoundry")
# --quick: the same recipe, small: 4 generation chunks of 2 identities x 2 images,
# stopped after the shards (the chunked stages, where per-task overhead lives, all run)
QUICK = [
    "identities.count=8",
    "generate.samples_per_identity=2",
    "generate.chunk_identities=2",
]
QUICK_STOP_AFTER = "shards"
OVERHEAD_TARGET_PCT = 10.0
WARM_UP = "from prefect import flow\nflow(name='bench-demo-warm-up')(lambda: None)()\n"


def loadavg() -> str:
    return Path("/proc/loadavg").read_text().strip()


class Run:
    """How every run of this benchmark calls the CLI: recipe, overrides, stop."""

    def __init__(self, recipe: str, overrides: list[str], stop_after: str | None):
        self.recipe, self.overrides, self.stop_after = recipe, overrides, stop_after

    def command(self, out: Path, prefect: bool) -> list[str]:
        cmd = [CLI, "run", self.recipe, "--out", str(out)]
        for override in self.overrides:
            cmd += ["--set", override]
        if self.stop_after:
            cmd += ["--stop-after", self.stop_after]
        return cmd + ([] if prefect else ["--no-prefect"])

    def timed(self, out: Path, prefect: bool, log: Path, env: dict | None = None) -> float:
        """Run the recipe to completion; return its wall seconds (raises on failure)."""
        started = time.perf_counter()
        with log.open("ab") as sink:
            subprocess.run(
                self.command(out, prefect), cwd=REPO, stdout=sink, stderr=sink, check=True, env=env
            )
        return time.perf_counter() - started


def planned_chunks(recipe_path: str, overrides: list[str]) -> tuple[str, int]:
    """(recipe name, generation chunks) as the generate stage plans them from the recipe."""
    from facefoundry.flows.config import load_recipe
    from facefoundry.generators.families import family_of

    recipe = load_recipe(REPO / recipe_path, overrides)
    ids = list(range(recipe.identities.count))
    return recipe.name, len(family_of(recipe.generate).plan(ids, recipe.generate))


def utc_seconds(stamp: str | None) -> float | None:
    """Prefect's database times (naive UTC text) as epoch seconds, like file mtimes."""
    if not stamp:
        return None
    when = datetime.datetime.fromisoformat(stamp)
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    return when.timestamp()


def prefect_task_runs(prefect_home: Path) -> list[dict]:
    """Every task run in the temporary server's database: name, start, end (epoch s)."""
    database = prefect_home / "prefect.db"
    if not database.is_file():
        return []
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute(
            "select name, start_time, end_time, state_type, run_count from task_run"
        ).fetchall()
    return [
        {
            "name": name,
            "start": utc_seconds(start),
            "end": utc_seconds(end),
            "state": state,
            "run_count": run_count,
        }
        for name, start, end, state, run_count in rows
    ]


def covered(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by the union of [start, end] intervals (parallel chunks overlap)."""
    total, reach = 0.0, -float("inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def chunk_bodies(run_dir: Path, tasks: list[dict] | None) -> dict[str, list[dict]]:
    """Per chunk of generate and embed: the body's [start, end] (epoch s), or None.

    embed: the part's ``_stats.json`` (written right after its own ``seconds`` were
    taken; its mtime is the body's end). generate: the chunk's parquet is its last
    write; the start is the Prefect task run whose interval holds that moment (only a
    Prefect run has one: ``tasks`` None leaves generate bodies unknown).
    """
    bodies: dict[str, list[dict]] = {"generate": [], "embed": []}
    for stats in sorted((run_dir / "embed").glob("part-*_stats.json")):
        seconds = json.loads(stats.read_text()).get("seconds")
        end = stats.stat().st_mtime
        bodies["embed"].append(
            {"chunk": stats.name, "start": end - seconds if seconds else None, "end": end}
        )
    runs = [t for t in tasks or [] if t["name"].startswith("generate-chunk") and t["start"]]
    for parquet in sorted((run_dir / "generate").glob("part-*.parquet")):
        end = parquet.stat().st_mtime
        # the task run holding that moment: the latest one started before it, still running
        holder = max(
            (t for t in runs if t["start"] <= end + 0.01 and (t["end"] or 0) >= end - 0.01),
            key=lambda t: t["start"],
            default=None,
        )
        start = holder["start"] if holder else None
        bodies["generate"].append({"chunk": parquet.name, "start": start, "end": end})
    return bodies


def chunk_overhead(stage_seconds: dict, bodies: dict[str, list[dict]], tasks: list[dict]) -> dict:
    """Per chunked stage: its seconds minus the seconds covered by its chunk bodies."""
    out: dict = {"complete": True}
    prefixes = {"generate": "generate-chunk", "embed": "embed-part"}
    for stage, chunks in bodies.items():
        known = [(c["start"], c["end"]) for c in chunks if c["start"] is not None]
        seconds = stage_seconds.get(stage)
        runs = [
            t for t in tasks if t["name"].startswith(prefixes[stage]) and t["start"] and t["end"]
        ]
        figures = {
            "stage_s": seconds,
            "chunks": len(chunks),
            "chunk_bodies_timed": len(known),
            "body_s": round(covered(known), 2),
            "task_runs": len(runs),
            "task_run_s": round(sum(t["end"] - t["start"] for t in runs), 2),
            "task_runs_retried": sum(1 for t in runs if (t["run_count"] or 1) > 1),
        }
        if seconds is None or not chunks or len(known) != len(chunks):
            figures["overhead_s"] = None
            out["complete"] = False
        else:
            figures["overhead_s"] = round(seconds - covered(known), 2)
        if runs:  # inside the task runs, around the body: sum of (task run - body)
            figures["in_task_overhead_s"] = round(figures["task_run_s"] - covered(known), 2)
        out[stage] = figures
    return out


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
    parser.add_argument("--recipe", default=RECIPE)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--quick", action="store_true", help="a small variant, a few minutes")
    args = parser.parse_args()
    overrides = (QUICK if args.quick else []) + args.set
    runner = Run(args.recipe, overrides, QUICK_STOP_AFTER if args.quick else None)
    name, n_chunks = planned_chunks(args.recipe, overrides)
    kill_after = max(1, n_chunks // 2)
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    log = out / "runs.log"
    figures: dict = {
        "machine": machine(),
        "loadavg_start": loadavg(),
        "quick": args.quick,
        "recipe": args.recipe,
        "overrides": overrides,
        "chunks_planned": n_chunks,
        "kill_after_chunks": kill_after,
    }

    # 1-2. Prefect vs direct.
    prefect_home = out / "prefect-home"
    prefect_home.mkdir()
    # create and migrate the fresh database first, untimed: a user's second run (and the
    # figures before this home was isolated) start with one; the server start stays timed
    started = time.perf_counter()
    with log.open("ab") as sink:
        subprocess.run(
            [sys.executable, "-c", WARM_UP],
            cwd=REPO,
            stdout=sink,
            stderr=sink,
            check=True,
            env={**os.environ, "PREFECT_HOME": str(prefect_home)},
        )
    figures["prefect_home_warm_up_s"] = round(time.perf_counter() - started, 1)
    tasks: list[dict] = []
    for mode in ("prefect", "direct"):
        figures[f"loadavg_{mode}_start"] = loadavg()
        env = {**os.environ, "PREFECT_HOME": str(prefect_home)} if mode == "prefect" else None
        wall = runner.timed(out / mode, mode == "prefect", log, env)
        figures[f"loadavg_{mode}_end"] = loadavg()
        run_dir = out / mode / name
        seconds = stage_seconds(run_dir)
        total = sum(s for s in seconds.values() if s is not None)
        figures[f"wall_{mode}_s"] = round(wall, 1)
        figures[f"stage_seconds_{mode}"] = seconds
        figures[f"stage_sum_{mode}_s"] = round(total, 1)
        figures[f"orchestration_{mode}_s"] = round(wall - total, 1)
        marker = run_dir / "generate" / "_SUCCESS.json"
        figures[f"chunks_in_marker_{mode}"] = (
            json.loads(marker.read_text()).get("chunks") if marker.is_file() else None
        )
        if mode == "prefect":
            tasks = prefect_task_runs(prefect_home)
            figures["prefect_task_runs_found"] = len(tasks)
        chunked = chunk_overhead(
            seconds,
            chunk_bodies(run_dir, tasks if mode == "prefect" else None),
            tasks if mode == "prefect" else [],
        )
        figures[f"chunk_tasks_{mode}"] = chunked
        print(f"{mode}: wall {wall:.1f}s, stages {seconds}, chunks {chunked}", flush=True)
    wall_p, wall_d = figures["wall_prefect_s"], figures["wall_direct_s"]
    # the old whole-run comparison, kept: run-to-run noise (generation) swamps it
    figures["prefect_overhead_whole_run_pct"] = round(100 * (wall_p - wall_d) / wall_p, 1)
    outside = figures["orchestration_prefect_s"] - figures["orchestration_direct_s"]
    in_chunks = [figures["chunk_tasks_prefect"][s]["overhead_s"] for s in ("generate", "embed")]
    control = figures["chunk_tasks_direct"]["embed"]["overhead_s"]  # a plain loop: ~0
    complete = (
        figures["chunk_tasks_prefect"]["complete"]
        and control is not None
        and figures["chunks_in_marker_prefect"] == n_chunks
        and figures["chunk_tasks_prefect"]["generate"]["task_runs"] == n_chunks
        and figures["chunk_tasks_prefect"]["embed"]["task_runs"] == n_chunks
    )
    figures["prefect_overhead_outside_stages_s"] = round(outside, 1)
    figures["prefect_overhead_chunk_tasks_s"] = (
        round(sum(in_chunks) - control, 2) if complete else None
    )
    figures["prefect_overhead_complete"] = bool(complete)
    if complete:
        total = outside + figures["prefect_overhead_chunk_tasks_s"]
        figures["prefect_overhead_s"] = round(total, 1)
        figures["prefect_overhead_pct"] = round(100 * total / wall_p, 1)
    else:
        figures["prefect_overhead_s"] = figures["prefect_overhead_pct"] = None
    figures["prefect_overhead_target_pct"] = OVERHEAD_TARGET_PCT
    figures["prefect_overhead_ok"] = bool(
        complete and figures["prefect_overhead_pct"] < OVERHEAD_TARGET_PCT
    )

    # 3. Kill after half the generation chunks, then resume.
    killed = out / "killed" / name
    figures["loadavg_killed_start"] = loadavg()
    started = time.perf_counter()
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            runner.command(out / "killed", False),
            cwd=REPO,
            stdout=sink,
            stderr=sink,
            start_new_session=True,
        )
        while len(chunks(killed)) < kill_after and proc.poll() is None:
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
    rerun = runner.timed(out / "killed", False, log)
    figures["loadavg_killed_end"] = loadavg()
    figures["rerun_wall_s"] = round(rerun, 1)
    figures["stage_seconds_rerun"] = stage_seconds(killed)
    figures["chunks_redone"] = sorted(
        p.name for p, m in mtimes.items() if p.stat().st_mtime_ns != m
    )
    generate_direct = figures["stage_seconds_direct"]["generate"] or 0.0
    figures["generation_seconds_not_redone"] = round(
        generate_direct * len(done_at_kill) / n_chunks, 1
    )
    figures["time_saved_s"] = round(wall_d - rerun, 1)
    figures["time_saved_incl_killed_part_s"] = round(
        wall_d - (figures["killed_after_s"] + rerun), 1
    )

    a, b = digests(out / "direct" / name / "shards"), digests(killed / "shards")
    figures["shard_files_direct"] = sorted(a)
    figures["shard_files_killed"] = sorted(b)
    differing = [
        {"file": f, "reason": explain(out / "direct" / name / "shards" / f, killed / "shards" / f)}
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
