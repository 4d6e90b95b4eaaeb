"""Shared fixtures: where LFW is, and how tests that need it behave without it.

LFW-dependent tests skip with a reason when the data is absent, except under
CI=true, where the data is provided and its absence is a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("FACEFOUNDRY_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def pytest_configure(config):
    # Tiny test models gain nothing from two threads, and OpenMP threads degrade badly
    # when the 2 cores are shared (measured: 0.36 s/step with 1 thread vs 1.25 s with 2).
    import torch

    torch.set_num_threads(1)


def _lfw_root() -> Path | None:
    root = Path(os.environ["FACEFOUNDRY_DATA_DIR"]) / "lfw"
    has_images = (root / "lfw-deepfunneled.tgz").is_file() or (root / "lfw-deepfunneled").is_dir()
    return root if (root / "pairs.txt").is_file() and has_images else None


@pytest.fixture(autouse=True)
def private_real_twins(tmp_path, monkeypatch):
    """Each test's compare stage trains its own real twin: a twin cached in the user's
    folder by an earlier run would let the stage skip the training it should exercise."""
    from facefoundry.evaluation import compare_real

    monkeypatch.setattr(compare_real, "twin_cache_root", lambda: tmp_path / "real-twins")


@pytest.fixture(scope="session")
def lfw_root() -> Path:
    root = _lfw_root()
    if root is None:
        message = (
            f"LFW not found under {os.environ['FACEFOUNDRY_DATA_DIR']}/lfw "
            "(set FACEFOUNDRY_DATA_DIR to the folder holding lfw/)"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(message + " - CI must provide it")
        pytest.skip(message)
    return root


@pytest.fixture(scope="session")
def lfw(lfw_root):
    from facefoundry.evaluation.lfw import Lfw

    return Lfw(lfw_root)
