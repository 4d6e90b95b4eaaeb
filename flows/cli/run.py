"""``facefoundry run``, ``stage`` and ``report``: build a dataset and look at a run folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facefoundry.errors import UsageError
from facefoundry.flows.cli._common import RAW, add_set_option, load_recipe, run_folder

RUN_DESCRIPTION = """\
Build a dataset end to end from a recipe: identities -> generate -> embed ->
filter -> shards -> train -> evaluate -> report, into OUT/<recipe name>/ (the run
folder: one subfolder per stage, the resolved recipe, report/report.html). Reads the
recipe, the generator model folder it names and LFW ($FACEFOUNDRY_DATA_DIR/lfw).
The recipe and the generator model folder are checked before any work starts.
Stages whose inputs did not change are skipped; a killed run resumes from its
complete chunks. Without a Prefect server Prefect starts a temporary one; with
orchestration.runner=dask and local processes, start `prefect server start` and set
PREFECT_API_URL first."""

STAGE_DESCRIPTION = """\
Run one stage of an existing run folder (made by `facefoundry run`) with the recipe
saved in it; the stages it reads from must be done. Writes RUN_DIR/<stage>/ and
prints the stage's result as JSON. A stage whose inputs did not change is skipped."""

REPORT_DESCRIPTION = """\
Write the HTML report of a run folder made by `facefoundry run`: stage states and
timings, the filter funnel, dataset and verification figures. Reads RUN_DIR (its
markers, metrics and evaluation JSON); writes RUN_DIR/report/report.html, or --out,
and prints the path. Refuses a folder that holds no run."""


def check_generator(recipe) -> None:
    """Refuse a missing or incomplete generator model folder before any stage runs (and,
    under Prefect, before a flow starts whose failed tasks would each log a traceback):
    first that the folder exists (no imports), then what the first stage reads of it,
    through the family's own check (which imports the family's code: torch)."""
    from facefoundry.generators.families import family_of

    settings = recipe.generate
    if not settings.model or not Path(settings.model).is_dir():
        field = type(settings).model_fields["model"]
        example = f", e.g. {field.default}" if field.default else ""
        raise UsageError(
            f"generator model folder {settings.model or '(empty)'} does not exist: set "
            f"generate.model to a model of family {settings.family} ({field.description}{example})"
        )
    family_of(settings).load().identity_space(settings)


def check_lfw(recipe, stop_after: str | None = None) -> None:
    """A run that validates or evaluates on LFW needs it: say so before the first stage,
    not after generation, embedding and training have run."""
    from facefoundry.flows.stage_table import STAGE_NAMES

    if stop_after and STAGE_NAMES.index(stop_after) < STAGE_NAMES.index("train"):
        return
    if not (recipe.evaluation.pairs or recipe.train.val_pairs):
        return
    from facefoundry.evaluation.lfw import Lfw

    Lfw(recipe.evaluation.lfw)  # LfwNotFoundError: a one-line usage error


def cmd_run(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.set)  # a bad key fails before anything starts
    check_generator(recipe)
    check_lfw(recipe, args.stop_after)
    if args.no_prefect:
        from facefoundry.flows.report import write_report
        from facefoundry.flows.stages import build

        results = build(recipe, args.out, args.stop_after)
        report = write_report(Path(args.out) / recipe.name)
        print(json.dumps({"stages": results, "report": str(report)}, default=str))
        return 0
    from facefoundry.flows.flows import run_build

    result = run_build(args.recipe, args.set, args.out, args.stop_after)
    print(json.dumps(result, default=str))
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    run_folder(args.run_dir)
    from facefoundry.flows.flows import stage_flow

    print(json.dumps(stage_flow(args.run_dir, args.stage), default=str))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    run_folder(args.run_dir)
    from facefoundry.flows.report import write_report

    print(write_report(args.run_dir, args.out))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    from facefoundry.flows.stage_table import STAGE_NAMES as STAGES

    run = commands.add_parser(
        "run",
        help="build a dataset end to end from a recipe (Prefect flow)",
        description=RUN_DESCRIPTION,
        formatter_class=RAW,
    )
    run.add_argument("recipe", help="recipe YAML, e.g. recipes/demo.yaml")
    run.add_argument("--out", default="runs", help="runs root (default: runs)")
    add_set_option(run, "override a recipe field, e.g. --set identities.count=50")
    run.add_argument(
        "--stop-after", choices=STAGES, default=None, help="stop after this stage (default: all)"
    )
    run.add_argument(
        "--no-prefect",
        action="store_true",
        help="call the stage functions directly (no orchestration)",
    )
    run.set_defaults(func=cmd_run)

    stage = commands.add_parser(
        "stage",
        help="run one stage of an existing run folder",
        description=STAGE_DESCRIPTION,
        formatter_class=RAW,
    )
    stage.add_argument("stage", choices=STAGES)
    stage.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/demo")
    stage.set_defaults(func=cmd_stage)

    report = commands.add_parser(
        "report",
        help="write RUN_DIR/report/report.html",
        description=REPORT_DESCRIPTION,
        formatter_class=RAW,
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/demo")
    report.add_argument(
        "--out", default=None, help="HTML file to write (default: RUN_DIR/report/report.html)"
    )
    report.set_defaults(func=cmd_report)
