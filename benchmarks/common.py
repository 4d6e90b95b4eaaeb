"""Shared helpers for benchmark scripts: machine facts and the last-line JSON convention."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
# Same default as the Makefile: the shared data folder beside the checkout.
os.environ.setdefault("FACEFOUNDRY_DATA_DIR", str(REPO.parent / "shared" / "data"))


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        or "uncommitted",
    }


def peak_gflops(seconds: float = 2.0) -> float:
    """Measured fp32 matrix-multiply rate of this machine (torch sgemm), a compute ceiling."""
    import torch

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        a @ b
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        count += 1
    return 2 * 1024**3 * count / (time.perf_counter() - started) / 1e9


def save_results(name: str, figures: dict) -> Path:
    """Write the figures to benchmarks/results/NAME.json (what BENCHMARKS.md tables quote)."""
    out = REPO / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=1, default=float))
    return out


def finish(figures: dict) -> None:
    """Print the figures as one JSON object on the last line (the benchmarks' contract)."""
    print(json.dumps(figures, sort_keys=True))


def median_spread(values, digits: int = 3) -> dict:
    """Repeated measurements as the headline median with the spread, never the best.

    ``{"median", "min", "max", "n", "runs"}``; ``runs`` keeps the order they were taken in.
    """
    runs = [float(v) for v in values]
    if not runs:
        raise ValueError("median_spread needs at least one measurement")
    return {
        "median": round(statistics.median(runs), digits),
        "min": round(min(runs), digits),
        "max": round(max(runs), digits),
        "n": len(runs),
        "runs": [round(v, digits) for v in runs],
    }


def describe(values, unit: str = "", digits: int = 3) -> str:
    """'median M unit (min A - max B over n runs)': how a repeated figure is printed."""
    s = median_spread(values, digits)
    unit = f" {unit}" if unit else ""
    if s["n"] == 1:
        return f"{s['median']}{unit} (1 run: no spread)"
    return f"median {s['median']}{unit} (min {s['min']} - max {s['max']} over {s['n']} runs)"


def interleaved(ways: dict, repeats: int) -> tuple[dict[str, list[float]], dict]:
    """Run every way once per repeat, in turn (a slow spell of the machine hits every way
    alike): (seconds per way, each way's last result)."""
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    results: dict = {}
    for repeat in range(repeats):
        for name, way in ways.items():
            started = time.perf_counter()
            results[name] = way()
            seconds[name].append(time.perf_counter() - started)
            print(f"repeat {repeat + 1} {name}: {seconds[name][-1]:.1f} s")
    return seconds, results
