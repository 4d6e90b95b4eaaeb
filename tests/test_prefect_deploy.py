"""prefect.yaml deploys against a real local Prefect server, and a deployed run (a process
worker started here) honours the recipe's orchestration section like `facefoundry run`."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
PREFECT = [sys.executable, "-m", "prefect"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(api url, environment) of a fresh local Prefect server with the two work pools."""
    home = tmp_path_factory.mktemp("prefect")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "FACEFOUNDRY_HOME": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    process = subprocess.Popen(
        [*PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.time() + 180
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("the local Prefect server did not start within 180 s")
        for pool in ("facefoundry-cpu", "facefoundry-gpu"):
            subprocess.run(
                [*PREFECT, "work-pool", "create", pool, "--type", "process"],
                env=env,
                check=True,
                capture_output=True,
                timeout=120,
            )
        yield api, env
    finally:
        process.terminate()
        process.wait(timeout=30)


def prefect(env, *arguments, timeout=300) -> str:
    done = subprocess.run(
        [*PREFECT, *arguments], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_prefect_deploy_all_registers_the_three_deployments(server):
    _, env = server
    prefect(env, "--no-prompt", "deploy", "--all")
    listing = prefect(env, "deployment", "ls")
    for name in ("nightly-build", "build-on-demand", "evaluate-model"):
        assert name in listing


def _post(url: str, body: dict) -> list:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _tars(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("part-*.tar")}


def test_a_deployed_run_honours_max_workers_and_matches_a_direct_run(server, tmp_path):
    import torch

    from facefoundry.flows.config import load_recipe
    from facefoundry.flows.stages import build
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from tests.helpers.flows import tiny_recipe
    from tests.helpers.generators import tiny_config

    api, env = server
    torch.manual_seed(0)
    IDiffFaceModel(tiny_config()).save_pretrained(tmp_path / "model")
    recipe = tiny_recipe(
        tmp_path,
        tmp_path / "model",
        generate={"chunk_identities": 1},
        orchestration={"runner": "threads", "max_workers": 1},
    )
    prefect(env, "--no-prompt", "deploy", "--name", "build-on-demand")
    parameters = {
        "recipe": recipe,
        "overrides": [],
        "runs_root": str(tmp_path / "deployed"),
        "stop_after": "generate",
        "report": False,
    }
    prefect(
        env,
        "deployment",
        "run",
        "build-dataset/build-on-demand",
        "--params",
        json.dumps(parameters),
    )
    # the same torch thread count as this process (conftest): CPU kernels may round differently
    worker_env = {**env, "OMP_NUM_THREADS": "1"}
    prefect(worker_env, "worker", "start", "--pool", "facefoundry-gpu", "--run-once", timeout=600)

    runs = _post(f"{api}/flow_runs/filter", {"limit": 50})
    states = {r["name"]: r["state"]["type"] for r in runs}
    assert runs and all(state == "COMPLETED" for state in states.values()), states
    chunks = _post(f"{api}/task_runs/filter", {"task_runs": {"name": {"like_": "generate-chunk"}}})
    spans = sorted(
        (datetime.fromisoformat(c["start_time"]), datetime.fromisoformat(c["end_time"]))
        for c in chunks
    )
    assert len(spans) == 4  # 4 identities, one per chunk
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, "two chunks overlapped although max_workers is 1"

    build(load_recipe(recipe), tmp_path / "direct", stop_after="generate")
    deployed = _tars(tmp_path / "deployed" / "tiny" / "generate")
    assert len(deployed) == 4 and deployed == _tars(tmp_path / "direct" / "tiny" / "generate")
