"""Stage markers: ``<stage>/_SUCCESS.json`` records the inputs hash of a finished stage.

A stage is skipped when its marker's hash equals the hash of its inputs now (its
recipe section + the hashes of the stages it reads). Changing a generator setting
changes the generate hash, hence the embed hash, and so on downstream: exactly the
stages that depend on the change re-run. What they had made is not deleted: it moves to
``<run>/.superseded/<stage>/<hash>/`` and comes back when the old inputs do; only
``facefoundry runs gc`` deletes it. One mechanism, plain files, no Prefect
result storage needed (Prefect retries and task caching stay orthogonal).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from pathlib import Path

from facefoundry.atomic import write_json_atomic

MARKER = "_SUCCESS.json"
PARTIAL = "_INPUTS"  # the inputs a stage folder without a marker is being built for
SUPERSEDED = ".superseded"


def inputs_hash(section: dict, upstream: list[str]) -> str:
    payload = json.dumps({"section": section, "upstream": upstream}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


def read_marker(stage_dir: Path) -> dict | None:
    path = stage_dir / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def is_current(stage_dir: Path, expected_hash: str) -> bool:
    marker = read_marker(stage_dir)
    return marker is not None and marker.get("inputs_hash") == expected_hash


def _state_hash(stage_dir: Path) -> str | None:
    """The inputs a stage folder holds output for: its marker's, else a killed run's."""
    marker = read_marker(stage_dir)
    if marker is not None:
        return marker.get("inputs_hash")
    partial = stage_dir / PARTIAL
    return partial.read_text().strip() if partial.is_file() else None


def superseded_dir(stage_dir: Path, inputs: str) -> Path:
    """Where a stage's output for other inputs is kept: ``<run>/.superseded/<stage>/<hash>``."""
    return stage_dir.parent / SUPERSEDED / stage_dir.name / inputs


def _move_contents(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for entry in sorted(source.iterdir()):
        entry.replace(target / entry.name)


def switch_inputs(stage_dir: Path, expected_hash: str) -> str:
    """Make ``stage_dir`` hold the output for ``expected_hash``, deleting nothing.

    Output for other inputs (finished, or a killed run's partial chunks) moves to
    :func:`superseded_dir`; output kept there for ``expected_hash`` moves back, so a
    recipe changed and changed back finds its first images again. Returns what
    happened: ``"current"``, ``"restored"``, ``"kept-partial"`` or ``"fresh"``.
    """
    current = _state_hash(stage_dir)
    if current == expected_hash:
        return "current" if read_marker(stage_dir) else "kept-partial"
    if current is not None and any(stage_dir.iterdir()):
        _move_contents(stage_dir, superseded_dir(stage_dir, current))
    kept = superseded_dir(stage_dir, expected_hash)
    if kept.is_dir():
        _move_contents(kept, stage_dir)
        kept.rmdir()
        return "restored"
    return "fresh"


def prepare_stage_dir(stage_dir: Path, expected_hash: str) -> None:
    """Ready ``stage_dir`` to (re)run for ``expected_hash``: other inputs' output is set
    aside (never deleted), a killed run of the same inputs resumes from its chunks."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    switch_inputs(stage_dir, expected_hash)
    (stage_dir / PARTIAL).write_text(expected_hash)


def superseded_outputs(run_dir: Path) -> list[tuple[Path, int]]:
    """Every kept output of a run (path, bytes), for ``facefoundry runs gc``."""
    root = Path(run_dir) / SUPERSEDED
    found = []
    for folder in sorted(root.glob("*/*")) if root.is_dir() else []:
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        found.append((folder, size))
    return found


def prune_superseded(run_dir: Path, dry_run: bool = True) -> list[tuple[Path, int]]:
    """Delete kept outputs (only when asked, and only with ``dry_run=False``)."""
    found = superseded_outputs(run_dir)
    if not dry_run:
        for folder, _ in found:
            shutil.rmtree(folder)
    return found


def write_marker(stage_dir: Path, expected_hash: str, seconds: float, extra: dict | None = None):
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("facefoundry", "torch", "diffusers", "prefect", "webdataset", "pyarrow"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    document = {
        "inputs_hash": expected_hash,
        "seconds": round(seconds, 2),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "python": platform.python_version(),
        "versions": versions,
        **(extra or {}),
    }
    write_json_atomic(stage_dir / MARKER, document)
