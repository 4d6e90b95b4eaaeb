"""The Prefect layer: build_dataset under a test harness, GPU-annotated tasks on Dask."""

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def test_build_dataset_flow_runs_stages_and_skips_on_rerun(harness, tmp_path):
    import torch

    from facefoundry.flows.flows import build_dataset
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from tests.helpers.flows import tiny_recipe
    from tests.helpers.generators import tiny_config

    torch.manual_seed(0)
    IDiffFaceModel(tiny_config()).save_pretrained(tmp_path / "model")
    recipe = tiny_recipe(tmp_path, tmp_path / "model")
    first = build_dataset(recipe, [], str(tmp_path / "runs"), stop_after="embed", report=False)
    stages = {r["stage"]: r for r in first["stages"]}
    assert set(stages) == {"identities", "generate", "embed"}
    assert not any(r["skipped"] for r in first["stages"])
    run_dir = tmp_path / "runs" / "tiny"
    assert len(list((run_dir / "embed").glob("part-*.parquet"))) == 2
    second = build_dataset(recipe, [], str(tmp_path / "runs"), stop_after="embed", report=False)
    assert all(r["skipped"] for r in second["stages"])
    marker = json.loads((run_dir / "generate" / "_SUCCESS.json").read_text())
    assert marker["chunks"] == 2


def test_gpu_annotated_tasks_run_only_on_a_worker_with_a_gpu(harness):
    from distributed import Scheduler, SpecCluster, Worker, get_worker
    from prefect import flow, task
    from prefect_dask import DaskTaskRunner

    from facefoundry.flows.flows import submit_all

    workers = {
        "cpu-worker": {"cls": Worker, "options": {"nthreads": 1, "name": "cpu-worker"}},
        "gpu-worker": {
            "cls": Worker,
            "options": {"nthreads": 1, "name": "gpu-worker", "resources": {"GPU": 1}},
        },
    }
    cluster = SpecCluster(
        workers=workers, scheduler={"cls": Scheduler, "options": {"dashboard_address": ":0"}}
    )

    @task
    def where(index: int) -> str:
        return get_worker().name

    @flow(task_runner=DaskTaskRunner(address=cluster.scheduler_address))
    def probe() -> tuple[list[str], list[str]]:
        gpu = submit_all(where, [(i,) for i in range(6)], gpu=True)
        plain = submit_all(where, [(i,) for i in range(6)], gpu=False)
        return [f.result() for f in gpu], [f.result() for f in plain]

    try:
        gpu_names, plain_names = probe()
    finally:
        cluster.close()
    assert set(gpu_names) == {"gpu-worker"}
    assert set(plain_names) <= {"cpu-worker", "gpu-worker"}
