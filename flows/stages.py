"""Running the stages of ``flows/stage_table.py`` over a run directory (no Prefect here).

A stage is skipped when its marker's inputs hash equals the hash of its inputs now
(recipe section + code digest + upstream hashes); chunked stages map their units
through ``map_units`` when an orchestrator gives one (``flows/flows.py``: Prefect
tasks), else run them in a loop. Tests call these functions directly.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import yaml

from facefoundry.flows.code_digest import code_digest
from facefoundry.flows.config import Recipe, load_recipe
from facefoundry.flows.markers import (
    inputs_hash,
    is_current,
    prepare_stage_dir,
    switch_inputs,
    write_marker,
)
from facefoundry.flows.run_dir import RunDir
from facefoundry.flows.stage_table import BY_NAME, STAGE_NAMES, STAGES

logger = logging.getLogger(__name__)

__all__ = ["STAGE_NAMES", "RunDir", "build", "run_named_stage", "stage_hash", "start_run"]


def start_run(recipe: Recipe, runs_root: str | Path = "runs") -> RunDir:
    """Create ``runs_root/<name>/`` and write the resolved recipe into it."""
    run = RunDir(Path(runs_root) / recipe.name)
    run.root.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)
    if not run.recipe.is_file() or run.recipe.read_text() != text:
        run.recipe.write_text(text)
    return run


def stage_hash(run: RunDir, stage: str, recipe: Recipe | None = None) -> str:
    """The inputs hash of ``stage`` now: section + code digest + upstream markers."""
    recipe = recipe or load_recipe(run.recipe)
    entry = BY_NAME[stage]
    upstream = []
    for name in entry.upstream:
        marker = run.marker(name)
        upstream.append(
            json.loads(marker.read_text())["inputs_hash"] if marker.is_file() else f"missing:{name}"
        )
    section = {"settings": entry.section(recipe), "code": code_digest(entry.code(recipe))}
    return inputs_hash(section, upstream)


def run_named_stage(run: RunDir, stage: str, map_units: Callable | None = None) -> dict:
    """Skip a current stage; else (re)run its body, or map its units, and mark it done."""
    entry = BY_NAME[stage]
    recipe = load_recipe(run.recipe)
    expected = stage_hash(run, stage, recipe)
    stage_dir = run.stage(stage)
    if stage_dir.is_dir():
        switch_inputs(stage_dir, expected)  # a kept output for these inputs comes back
    if is_current(stage_dir, expected):
        logger.info("%s is up to date (inputs %s): skipped", stage, expected)
        return {"stage": stage, "skipped": True, "inputs_hash": expected}
    prepare_stage_dir(stage_dir, expected)
    started = time.perf_counter()
    if entry.chunked:
        units = [(run, *arguments) for arguments in entry.plan(run, recipe)]
        if map_units is not None:
            outputs = map_units(entry.unit, units)
        else:
            outputs = [entry.unit(*unit) for unit in units]
        extra = {entry.unit_name: len(outputs)}
    else:
        extra = entry.body(run, recipe) or {}
    seconds = time.perf_counter() - started
    write_marker(stage_dir, expected, seconds, extra)
    return {"stage": stage, "skipped": False, "inputs_hash": expected, "seconds": seconds, **extra}


def build(
    recipe: Recipe,
    runs_root: str | Path = "runs",
    stop_after: str | None = None,
    map_units: Callable | None = None,
) -> list[dict]:
    """Every stage in order, skipping current ones (the plain-Python end-to-end build)."""
    run = start_run(recipe, runs_root)
    results = []
    for stage in STAGES:
        results.append(run_named_stage(run, stage.name, map_units))
        if stage.name == stop_after:
            break
    return results
