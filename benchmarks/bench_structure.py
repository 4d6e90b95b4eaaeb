"""The package structure, measured: what loading a recipe costs, and that a refactor kept
the data bytes.

1. ``facefoundry recipe check recipes/demo.yaml`` in fresh interpreters (``-X importtime``):
   wall time (median of ``--repeats``) and whether torch, cv2 or numpy were imported.
2. With ``--compare-tree OLD``: the same small recipe (6 fitted identities x 4 samples,
   the default model, up to the shards stage) through an old checkout (run as
   ``python -m flows.cli`` with ``PYTHONPATH=OLD``, the pre-namespace layout) and through
   this one; compares identities, generated chunks and shard members byte for byte.
   Expected differences are reported, not hidden: chunk tars may gain end-of-archive
   blocks and shards gain ``.cls`` members, with every old member identical.

Last line: JSON with ``recipe_check_s`` (median/min/max), ``heavy_imports`` (target []),
and, when comparing, ``identities_identical``, ``chunk_tables_identical``,
``chunk_images_identical`` (old tar = prefix of new, rest zero), ``shard_members_identical``
and ``shard_members_added``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from common import REPO, finish, machine, median_spread

HEAVY = ("torch", "cv2", "numpy")
SMALL_RECIPE = """\
name: small
seed: 0
identities: {count: 6, method: fitted, tau: 0.3}
generate: {model: %s, samples_per_identity: 4, steps: 6, guidance_scale: 3.0,
           batch_size: 100, chunk_identities: 3}
filter: {judge_embedder: dlib, min_samples: 2}
"""


def recipe_check(repeats: int) -> dict:
    times, heavy = [], set()
    for _ in range(repeats):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "facefoundry.flows.cli", "recipe", "check",
             str(REPO / "recipes" / "demo.yaml")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        times.append(time.perf_counter() - started)
        for line in done.stderr.splitlines():
            name = line.rsplit("|", 1)[-1].strip()
            if name in HEAVY:
                heavy.add(name)
    return {"recipe_check_s": median_spread(times), "heavy_imports": sorted(heavy)}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def compare(old_tree: Path, work: Path) -> dict:
    recipe = work / "small.yaml"
    recipe.write_text(SMALL_RECIPE % (REPO / "models" / "idiff-face-lfw"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = ["run", str(recipe), "--no-prefect", "--stop-after", "shards"]
    subprocess.run(
        [sys.executable, "-m", "flows.cli", *argv, "--out", str(work / "old")],
        cwd=old_tree, env={**env, "PYTHONPATH": str(old_tree)}, check=True, capture_output=True,
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "facefoundry.flows.cli", *argv, "--out", str(work / "new")],
        cwd=REPO, env=env, check=True, capture_output=True,
    )  # fmt: skip
    old, new = work / "old" / "small", work / "new" / "small"
    tables = sorted((old / "generate").glob("part-*.parquet"))
    images = []
    for tar in sorted((old / "generate").glob("part-*.tar")):
        a, b = tar.read_bytes(), (new / "generate" / tar.name).read_bytes()
        images.append(b[: len(a)] == a and not any(b[len(a) :]))
    same_members, added = True, set()
    for tar in sorted((old / "shards").glob("*.tar")):
        a, b = members(tar), members(new / "shards" / tar.name)
        same_members &= all(b.get(name) == data for name, data in a.items())
        added |= {name.rsplit(".", 1)[-1] for name in set(b) - set(a)}
    return {
        "identities_identical": sha(old / "identities" / "identities.parquet")
        == sha(new / "identities" / "identities.parquet"),
        "chunk_tables_identical": all(sha(p) == sha(new / "generate" / p.name) for p in tables),
        "chunk_images_identical": bool(images) and all(images),
        "shard_members_identical": same_members,
        "shard_members_added": sorted(added),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="3 repeats, no comparison")
    parser.add_argument("--compare-tree", type=Path, help="an old checkout to compare bytes with")
    args = parser.parse_args()
    figures = recipe_check(3 if args.quick else args.repeats)
    if args.compare_tree and not args.quick:
        with tempfile.TemporaryDirectory() as work:
            figures |= compare(args.compare_tree.resolve(), Path(work))
    finish({"benchmark": "structure", **figures, "machine": machine()})


if __name__ == "__main__":
    main()
