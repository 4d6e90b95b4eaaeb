"""prefect.yaml deploys against a real local Prefect server."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_prefect_deploy_all_registers_the_three_deployments(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "FACEFOUNDRY_HOME": str(REPO),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    prefect = [sys.executable, "-m", "prefect"]
    server = subprocess.Popen(
        [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)],
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
                [*prefect, "work-pool", "create", pool, "--type", "process"],
                env=env,
                check=True,
                capture_output=True,
                timeout=120,
            )
        deploy = subprocess.run(
            [*prefect, "--no-prompt", "deploy", "--all"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        listing = subprocess.run(
            [*prefect, "deployment", "ls"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        for name in ("nightly-build", "build-on-demand", "evaluate-model"):
            assert name in listing
    finally:
        server.terminate()
        server.wait(timeout=30)
