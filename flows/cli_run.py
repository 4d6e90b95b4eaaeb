"""CLI for the end-to-end build: ``run``, ``stage`` and ``report``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_run(args: argparse.Namespace) -> int:
    from flows.config import load_recipe

    load_recipe(args.recipe, args.set)  # fail on a bad key before starting anything
    if args.no_prefect:
        from evaluation.report import write_report
        from flows.stages import build

        recipe = load_recipe(args.recipe, args.set)
        results = build(recipe, args.out, args.stop_after)
        report = write_report(Path(args.out) / recipe.name)
        print(json.dumps({"stages": results, "report": str(report)}, default=str))
        return 0
    from flows.flows import run_build

    result = run_build(args.recipe, args.set, args.out, args.stop_after)
    print(json.dumps(result, default=str))
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from flows.flows import stage_flow

    print(json.dumps(stage_flow(args.run_dir, args.stage), default=str))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from evaluation.report import write_report

    print(write_report(args.run_dir, args.out))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from flows.stages import STAGES

    run = commands.add_parser(
        "run",
        help="build a dataset end to end from a recipe (Prefect flow)",
        description="Runs identities -> generate -> embed -> filter -> shards -> train -> "
        "evaluate -> report into OUT/<recipe name>/. Stages whose inputs did not change are "
        "skipped; a killed run resumes from its complete chunks. Without a Prefect server "
        "Prefect starts a temporary one; with orchestration.runner=dask and local processes, "
        "start `prefect server start` and set PREFECT_API_URL first.",
    )
    run.add_argument("recipe", help="recipe YAML, e.g. recipes/demo.yaml")
    run.add_argument("--out", default="runs", help="runs root (default: runs)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field (repeatable)",
    )
    run.add_argument("--stop-after", choices=STAGES, default=None)
    run.add_argument(
        "--no-prefect",
        action="store_true",
        help="call the stage functions directly (no orchestration)",
    )
    run.set_defaults(func=cmd_run)

    stage = commands.add_parser("stage", help="run one stage of an existing run folder")
    stage.add_argument("stage", choices=STAGES)
    stage.add_argument("run_dir")
    stage.set_defaults(func=cmd_stage)

    report = commands.add_parser("report", help="write RUN_DIR/report/report.html")
    report.add_argument("run_dir")
    report.add_argument("--out", default=None)
    report.set_defaults(func=cmd_report)
