"""Packaging: pyproject.toml states compatible ranges (installing facefoundry keeps a fitting
torch that is already there); constraints.txt pins what CI and `make` install."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

REPO = Path(__file__).resolve().parents[1]


def requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        listed += extra
    return [Requirement(line) for line in listed]


def constraints() -> dict[str, Version]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"constraints.txt: {line!r} is not NAME==VERSION"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = Version(match.group(2))
    return pins


def test_no_dependency_is_pinned_exactly() -> None:
    pinned = [
        str(r) for r in requirements() if any(s.operator in ("==", "===") for s in r.specifier)
    ]
    assert pinned == [], "exact pins belong in constraints.txt, not pyproject.toml"


def test_torch_range_admits_other_installed_torch_versions() -> None:
    torch = next(r for r in requirements() if r.name == "torch")
    for version in ("2.5.0", "2.13.0", "2.13.0+cpu", "2.14.1"):
        assert torch.specifier.contains(version), f"torch {version} should be accepted"
    assert not torch.specifier.contains("2.4.1")  # recognition/export.py needs onnx dynamo=False


def test_constraints_pin_every_dependency_inside_its_range() -> None:
    pins = constraints()
    assert "facefoundry" not in pins
    assert pins[canonicalize_name("insightface")] == Version("2.1")  # installed with --no-deps
    for req in requirements():
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} has no version in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}"
        )
    assert pins["torch"] == Version("2.13.0")  # public version: matches the local +cpu build too


def test_makefile_installs_with_the_constraints_and_reinstalls_when_they_change() -> None:
    makefile = (REPO / "Makefile").read_text()
    assert re.search(r"^\$\(STAMP\):.*\bconstraints\.txt\b", makefile, re.M)
    installs = [line for line in makefile.splitlines() if "pip install" in line and "pip " in line]
    project = [line for line in installs if "-e '.[dev]'" in line or "insightface" in line]
    assert len(project) == 2 and all("-c constraints.txt" in line for line in project)
    assert any("--no-deps" in line and "insightface" in line for line in project)


def test_an_export_named_like_its_submodule_stays_the_function_after_that_import():
    """``finalize`` (function) lives in ``finalize.py``: importing the submodule first (as
    the shards stage does) must not turn ``from facefoundry.shards import finalize`` into
    the module (it did: real-data shards then failed with 'module is not callable')."""
    import subprocess
    import sys

    code = (
        "from facefoundry.shards.finalize import finalize as direct\n"
        "from facefoundry.shards import finalize\n"
        "assert finalize is direct, finalize\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
