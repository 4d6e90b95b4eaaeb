"""Stage markers: ``<stage>/_SUCCESS.json`` records the inputs hash of a finished stage.

A stage is skipped when its marker's hash equals the hash of its inputs now (its
recipe section + the hashes of the stages it reads). Changing a generator setting
changes the generate hash, hence the embed hash, and so on downstream: exactly the
stages that depend on the change re-run. One mechanism, plain files, no Prefect
result storage needed (Prefect retries and task caching stay orthogonal).
"""

from __future__ import annotations

import hashlib
import json
import platform
import shutil
import time
from pathlib import Path

MARKER = "_SUCCESS.json"


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


def prepare_stage_dir(stage_dir: Path, expected_hash: str) -> None:
    """Clear a stage folder whose marker is for other inputs (a stale run); keep a folder
    with no marker (a killed run of the same inputs resumes from its complete chunks)."""
    marker = read_marker(stage_dir)
    if marker is not None and marker.get("inputs_hash") != expected_hash:
        shutil.rmtree(stage_dir)
    partial_hash = stage_dir / "_INPUTS"
    if partial_hash.is_file() and partial_hash.read_text().strip() != expected_hash:
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    partial_hash.write_text(expected_hash)


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
    partial = stage_dir / (MARKER + ".partial")
    partial.write_text(json.dumps(document, indent=1))
    partial.replace(stage_dir / MARKER)
