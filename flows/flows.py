"""Prefect flows: one per stage and ``build_dataset`` chaining them.

All logic lives in ``flows.stages`` and the stage packages; here we only decide how
work is scheduled: chunked stages (generate, embed) become mapped tasks with retries,
on threads locally or on a Dask cluster through prefect-dask, GPU tasks annotated
with ``resources={"GPU": 1}``. Tasks receive paths (run folder, chunk ids), never
arrays. Re-runs skip stages whose ``_SUCCESS.json`` matches their inputs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow, get_run_logger, task

from facefoundry.flows.config import OrchestrationSettings, Recipe, load_recipe
from facefoundry.flows.run_dir import RunDir
from facefoundry.flows.stage_table import BY_NAME, STAGES, embed_unit, generate_unit
from facefoundry.flows.stages import run_named_stage, start_run

logger = logging.getLogger(__name__)


def make_task_runner(settings: OrchestrationSettings):
    """Threads locally; a Dask cluster (existing, local processes, or one worker per GPU)."""
    from prefect.task_runners import ThreadPoolTaskRunner

    if settings.runner == "threads":
        return ThreadPoolTaskRunner(max_workers=settings.max_workers)
    from prefect_dask import DaskTaskRunner

    if settings.dask_address:
        return DaskTaskRunner(address=settings.dask_address)
    if settings.gpu_workers:
        return DaskTaskRunner(
            cluster_class="dask_cuda.LocalCUDACluster",
            cluster_kwargs={"resources": {"GPU": 1}, "threads_per_worker": 1},
        )
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": settings.dask_workers,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        },
    )


@task(name="generate-chunk", retries=2, retry_delay_seconds=[5, 30])
def generate_chunk_task(run_dir: str, part: int, identity_ids: list[int]) -> str:
    return generate_unit(RunDir(Path(run_dir)), part, identity_ids)


@task(name="embed-part", retries=2, retry_delay_seconds=[5, 30])
def embed_part_task(run_dir: str, tar_path: str) -> dict:
    return embed_unit(RunDir(Path(run_dir)), tar_path)


@task(name="stage")
def stage_task(run_dir: str, stage: str) -> dict:
    return run_named_stage(RunDir(Path(run_dir)), stage)


def submit_all(prefect_task, argument_lists: list[tuple], gpu: bool = False) -> list:
    """Submit one task per argument tuple; with ``gpu`` each carries resources GPU=1, so
    a Dask scheduler only places it on workers that declare a GPU."""
    if not gpu:
        return [prefect_task.submit(*arguments) for arguments in argument_lists]
    import dask

    with dask.annotate(resources={"GPU": 1}):
        return [prefect_task.submit(*arguments) for arguments in argument_lists]


def _prefect_mapper(settings: OrchestrationSettings):
    """Run each unit as a Prefect task with retries; a progress artifact per stage."""
    from prefect.artifacts import create_progress_artifact, update_progress_artifact

    tasks = {generate_unit: generate_chunk_task, embed_unit: embed_part_task}

    def map_units(function, units):
        prefect_task = tasks[function].with_options(retries=settings.retries)
        progress = create_progress_artifact(0.0, description=f"{function.__name__} chunks")
        arguments = [(str(unit[0].root), *unit[1:]) for unit in units]
        futures = submit_all(prefect_task, arguments, settings.gpu_tasks)
        results = []
        for index, future in enumerate(futures, start=1):
            results.append(future.result())
            update_progress_artifact(progress, 100.0 * index / len(futures))
        return results

    return map_units


def _publish(run_dir: Path) -> None:
    """Key tables of the report as Prefect artifacts (markdown + table)."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    from facefoundry.flows.report import summarise

    summary = summarise(run_dir)
    create_markdown_artifact(
        "\n".join(f"- {line}" for line in summary["verdict"]) or "- no data",
        key="facefoundry-verdict",
        description=f"run {run_dir.name}",
    )
    rows = [
        {"stage": s, "seconds": (m or {}).get("seconds"), "done": bool(m)}
        for s, m in summary["markers"].items()
    ]
    create_table_artifact(rows, key="facefoundry-stages", description="stage timings")


@flow(name="facefoundry-stage", log_prints=True)
def stage_flow(run_dir: str, stage: str) -> dict:
    """Run one stage of an existing run folder (the others must be done)."""
    run = RunDir(Path(run_dir))
    if BY_NAME[stage].chunked:
        recipe = load_recipe(run.recipe)
        return run_named_stage(run, stage, _prefect_mapper(recipe.orchestration))
    return stage_task(run_dir, stage)


@flow(name="build-dataset", log_prints=True)
def build_dataset(
    recipe: str = "recipes/demo.yaml",
    overrides: list[str] | None = None,
    runs_root: str = "runs",
    stop_after: str | None = None,
    report: bool = True,
) -> dict:
    """recipe -> identities -> images -> embeddings -> filter -> shards -> model -> report.

    The recipe's ``orchestration`` section chooses where the chunk tasks run (threads
    with ``max_workers``, or Dask): here, inside the flow, so a deployed run honours it
    exactly as ``facefoundry run`` does."""
    resolved: Recipe = load_recipe(recipe, overrides)  # a bad key fails before any work
    runner = make_task_runner(resolved.orchestration)
    return build_stages.with_options(task_runner=runner)(
        recipe, overrides or [], runs_root, stop_after, report
    )


@flow(name="build-stages", log_prints=True)
def build_stages(
    recipe: str,
    overrides: list[str],
    runs_root: str,
    stop_after: str | None,
    report: bool,
) -> dict:
    """The stages in order (on the task runner ``build_dataset`` gave this subflow)."""
    log = get_run_logger()
    resolved: Recipe = load_recipe(recipe, overrides)
    run = start_run(resolved, runs_root)
    mapper = _prefect_mapper(resolved.orchestration)
    results = []
    for stage in STAGES:
        if stage.chunked:
            result = run_named_stage(run, stage.name, mapper)
        else:
            result = stage_task(str(run.root), stage.name)
        log.info("%s: %s", stage.name, "skipped" if result.get("skipped") else "done")
        results.append(result)
        if stage.name == stop_after:
            break
    report_path = None
    if report:
        from facefoundry.flows.report import write_report

        report_path = str(write_report(run.root))
        _publish(run.root)
    return {"run_dir": str(run.root), "stages": results, "report": report_path}


@flow(name="evaluate-model", log_prints=True)
def evaluate_model(model: str, pairs: list[str] | None = None, out: str | None = None) -> dict:
    """Score any recognizer (onnx:PATH, sface, dlib, ...) on LFW; for the eval deployment."""
    import json

    from facefoundry.evaluation.verify import evaluate_lfw

    results = {}
    for name in pairs or ["devtest", "view2"]:
        figures = evaluate_lfw(model, name, progress=False)
        results[name] = {k: figures[k] for k in ("accuracy", "accuracy_std", "auc", "eer")}
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(results, indent=1))
    return results


def run_build(
    recipe: str,
    overrides: list[str] | None = None,
    runs_root: str = "runs",
    stop_after: str | None = None,
) -> dict:
    """``facefoundry run``: the same flow a deployment runs."""
    return build_dataset(recipe, overrides or [], runs_root, stop_after)
