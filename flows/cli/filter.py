"""``facefoundry filter``, ``metrics`` and ``calibrate``: the filter stage, dataset-quality
metrics and false-match-rate calibration (thin wrappers over filters/)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facefoundry.errors import UsageError
from facefoundry.faces.specs import EMBEDDER_HELP
from facefoundry.flows.cli._common import (
    LFW_HELP,
    RAW,
    add_set_option,
    check_models,
    check_recipe_file,
    existing_file,
    load_recipe,
)

FILTER_DESCRIPTION = """\
Run the filter stage on embedded candidates: face rules (no face, several faces, low
detection score), intra-class consistency (cosine to the identity centroid: absolute
threshold, then the lowest quantile per identity), at least k samples per identity,
privacy (no identity centroid above tau_priv to any real reference identity: --reference,
else the training people recorded in the generator's model folder, --generator or the
run's recipe, at their calibrated threshold; --reference none turns it off) and
greedy de-duplication (centroids above tau_inter). Reads TARGET's embed parts (and a
run's generate/ tables for identities); writes decisions.parquet (one row per
candidate, rejects with a reason), identities.parquet and metrics.json (funnel,
before/after metrics scored by an independent judge embedder) to --out.

Settings: the defaults, or --settings (a recipe, whose `filter:` section is read with
the same loader as `facefoundry run`, or a YAML of filter settings alone), then --set,
then --embedder/--judge/--reference. Thresholds are cosines for one embedder
(--set tau_inter=0.4) or false-match rates calibrated on LFW impostor pairs
(--set 'tau_inter={fmr: 1e-4}'); see docs/filters.md."""

METRICS_DESCRIPTION = """\
Dataset-quality metrics of embedded samples with one embedder: genuine/impostor cosine
distributions (seeded impostor pairs), EER, FNMR at FMR 1e-2 and 1e-3, FDR, d', DCFace
uniqueness and consistency, images per identity. Reads DIR's embed parts; with filter
decisions (found in the run directory or given by --decisions): before and after
filtering. Prints a table and the JSON (or writes it to --json)."""

CALIBRATE_DESCRIPTION = """\
Calibrate false-match-rate thresholds for an embedder on LFW: embed LFW people (YuNet,
no flip, as the embed stage does), score seeded impostor pairs and store the cosine at
each FMR from 1e-1 down to what the pair count resolves, as JSON in --out (default
$FACEFOUNDRY_CACHE_DIR/calibration). Filter settings given as {fmr: ...} then resolve
to this embedder's cosine."""


def _print(document: dict) -> None:
    print(json.dumps(document, indent=2))


def _settings_error(error) -> UsageError:
    from facefoundry.flows.config import RecipeError

    lines = [
        f"filter settings: '{'.'.join(map(str, e['loc']))}': {e['msg']}" for e in error.errors()
    ]
    return RecipeError("\n".join(lines))


def _bare_settings(path: str | Path) -> dict | None:
    """The document of a YAML that holds filter settings alone (not a recipe), else None."""
    import yaml

    from facefoundry.filters.settings import FilterSettings
    from facefoundry.flows.config import RecipeError

    try:
        document = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise RecipeError(f"filter settings {path} do not exist") from None
    except (OSError, yaml.YAMLError) as error:
        raise RecipeError(f"cannot read filter settings {path}: {error}") from error
    if (
        isinstance(document, dict)
        and document
        and set(document) <= set(FilterSettings.model_fields)
    ):
        return document
    return None


def load_filter_settings(path: str | None, overrides: list[str], **direct):
    """FilterSettings: the defaults or ``path``'s, then ``--set`` ``overrides``, then the
    ``direct`` options that are not None. ``path`` is a recipe (its ``filter:`` section,
    read by ``flows.config.load_recipe`` exactly as ``run`` reads it) or a YAML of filter
    settings alone."""
    from pydantic import ValidationError

    from facefoundry.filters.settings import FilterSettings
    from facefoundry.flows.config import apply_overrides

    direct = {key: value for key, value in direct.items() if value is not None}
    # a key of the section, as in --set min_samples=3, or as in a recipe: filter.min_samples=3
    overrides = [text.removeprefix("filter.") for text in overrides]
    check_recipe_file(path)
    bare = _bare_settings(path) if path else None
    if bare is not None:
        document = apply_overrides(dict(bare), overrides)
        document.update(direct)
        try:
            return FilterSettings.model_validate(document)
        except ValidationError as error:
            raise _settings_error(error) from None
    # JSON is YAML: a direct value (an embedder spec, a path) is read back exactly.
    extra = [f"filter.{key}={json.dumps(value)}" for key, value in direct.items()]
    return load_recipe(path, [f"filter.{text}" for text in overrides] + extra).filter


def _funnel_table(funnel: dict):
    from rich.table import Table

    table = Table(title="filter funnel (- = removed by the rule)")
    for column in ("rule", "samples -", "samples", "ids -", "ids"):
        table.add_column(column, justify="right" if column != "rule" else "left")
    ids = {s["rule"]: s for s in funnel["identities"]["steps"]}
    table.add_row(
        "input", "", str(funnel["samples"]["input"]), "", str(funnel["identities"]["input"])
    )
    for step in funnel["samples"]["steps"]:
        ident = ids.get(step["rule"])
        table.add_row(
            step["rule"],
            str(step["removed"]),
            str(step["remaining"]),
            str(ident["removed"]) if ident else "",
            str(ident["remaining"]) if ident else "",
        )
    if "no_samples_left" in ids:
        step = ids["no_samples_left"]
        table.add_row("no_samples_left", "", "", str(step["removed"]), str(step["remaining"]))
    return table


def _metrics_table(title: str, metrics: dict):
    from rich.table import Table

    table = Table(title=title)
    for column in ("", "samples", "ids", "EER", "FNMR@1e-3", "FDR", "d'", "unique", "consist."):
        table.add_column(column, justify="right")

    def fmt(value, percent=False):
        if value is None:
            return "-"
        return f"{100 * value:.1f}%" if percent else f"{value:.2f}"

    for when in ("before", "after"):
        m = metrics.get(when)
        if not m:
            continue
        fnmr = (m.get("fnmr_at_fmr") or {}).get("1e-03", {}).get("fnmr")
        table.add_row(
            when,
            str(m.get("samples")),
            str(m.get("identities")),
            f"{100 * m['eer']:.2f}%" if m.get("eer") is not None else "-",
            f"{100 * fnmr:.2f}%" if fnmr is not None else "-",
            fmt(m.get("fdr")),
            fmt(m.get("d_prime")),
            fmt(m.get("uniqueness"), True),
            fmt(m.get("consistency"), True),
        )
    return table


def _existing_target(path: str, what: str) -> Path:
    target = Path(path)
    if not target.exists():
        raise UsageError(
            f"{what} {target} does not exist: give a run folder (with embed/), "
            "an embed folder or one embed parquet"
        )
    return target


def _run_recipe_value(target: Path, section: str, key: str) -> str | None:
    """A value of a run folder's resolved recipe (None when TARGET is no run folder)."""
    import yaml

    from facefoundry.flows.run_dir import RunDir

    path = RunDir(target).recipe
    if not path.is_file():
        return None
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return (document.get(section) or {}).get(key)


def cmd_filter(args: argparse.Namespace) -> int:
    target = _existing_target(args.target, "filter target")
    if args.out:
        out = Path(args.out)
    elif (target / "embed").is_dir():
        out = target / "filter"
    elif target.name == "embed":
        out = target.parent / "filter"
    else:
        raise UsageError(f"give --out DIR: {target} is not a run folder or an embed folder")
    settings = load_filter_settings(
        args.settings,
        args.set,
        embedder=args.embedder,
        judge_embedder=args.judge,
        reference=args.reference,
    )
    from rich.console import Console

    from facefoundry.filters.stage import METRICS, run_filter

    generator = args.generator or _run_recipe_value(target, "generate", "model")
    lfw = args.lfw or _run_recipe_value(target, "evaluation", "lfw")
    out = run_filter(
        target, out, settings, generator_model=generator, lfw=lfw, progress=not args.quiet
    )
    document = json.loads((out / METRICS).read_text())
    if not args.quiet:
        console = Console()
        console.print(_funnel_table(document["funnel"]))
        for role, metrics in document["metrics"].items():
            console.print(_metrics_table(f"{role} embedder: {metrics['embedder']}", metrics))
        distinct = document.get("judge_distinct") or {}
        if "distinct_identities" in distinct:
            console.print(
                f"distinct by the judge ({distinct['judge']}, FMR {distinct['fmr']:g}): "
                f"{distinct['distinct_identities']} of {distinct['kept_identities']} kept "
                "identities"
            )
    print(str(out))
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    _existing_target(args.dir, "metrics input")
    if args.decisions:
        existing_file(args.decisions, "decisions file", "give a filter stage's decisions.parquet")
    settings = load_filter_settings(
        None,
        args.set,
        judge_embedder=args.embedder,
        allow_same_judge=True,
        calibration=args.calibration,
    )
    from rich.console import Console

    from facefoundry.filters.stage import compute_metrics

    document = compute_metrics(
        args.dir, args.embedder, settings, decisions=args.decisions, workers=args.workers
    )
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(document, indent=2) + "\n")
    if not args.quiet:
        Console().print(_metrics_table(f"metrics: {document['embedder']}", document))
    if not args.json:
        _print(document)
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    import numpy as np

    from facefoundry.evaluation.lfw import Lfw, image_name, read_people
    from facefoundry.filters.calibrate import calibrate_images, save_calibration

    lfw = Lfw(args.lfw)
    check_models(args.embedder)
    counts: dict[str, int] = {}
    for name, count in read_people(lfw.protocol_file("people.txt")):
        counts[name] = counts.get(name, 0) + count
    rng = np.random.default_rng(args.seed)
    people = sorted(counts)
    if args.people and args.people < len(people):
        people = sorted(rng.choice(people, size=args.people, replace=False).tolist())
    names = []
    for person in people:
        numbers = np.arange(1, counts[person] + 1)
        if len(numbers) > args.per_person:
            numbers = np.sort(rng.choice(numbers, size=args.per_person, replace=False))
        names.extend((image_name(person, int(k)), person) for k in numbers)
    data = dict(lfw.read_many(n for n, _ in names))
    calibration = calibrate_images(
        [(name, person, data[name]) for name, person in names],
        args.embedder,
        workers=args.workers,
        n_pairs=args.pairs,
        seed=args.seed,
        source=f"LFW deep-funneled, {len(people)} people (<= {args.per_person} images each)",
        progress=not args.quiet,
    )
    path = save_calibration(calibration, args.out)
    shown = {
        k: round(v, 4)
        for k, v in calibration.thresholds.items()
        if k in ("0.01", "0.001", "0.0001", "1e-05")
    }
    _print({"path": str(path), "embedder": calibration.embedder, "cos_at_fmr": shown})
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    run = commands.add_parser(
        "filter",
        help="filter embedded candidates: per-sample decisions, metrics and the funnel",
        description=FILTER_DESCRIPTION,
        formatter_class=RAW,
    )
    run.add_argument("target", help="run directory (with embed/), embed folder or one parquet")
    run.add_argument("--out", default=None, help="output folder (default: RUN/filter)")
    run.add_argument(
        "--settings",
        default=None,
        help="a recipe (its filter: section) or a YAML of filter settings alone",
    )
    add_set_option(
        run, "override a setting, e.g. --set tau_inter=0.4 or --set 'tau_priv={fmr: 1e-4}'"
    )
    run.add_argument("--embedder", default=None, help="filtering embedder (default sface)")
    run.add_argument("--judge", default=None, help="reporting embedder (default dlib)")
    run.add_argument(
        "--reference",
        default=None,
        help="real reference embeddings for privacy (none: privacy off; default: the "
        "generator's recorded training people)",
    )
    run.add_argument(
        "--generator",
        default=None,
        metavar="MODEL_DIR",
        help="generator model folder whose recorded training set (training_set.yaml) is the "
        "default privacy reference (default: the run's generate.model)",
    )
    run.add_argument("--lfw", default=None, help=LFW_HELP)
    run.add_argument("-q", "--quiet", action="store_true", help="no tables or progress bars")
    run.set_defaults(func=cmd_filter)

    metrics = commands.add_parser(
        "metrics",
        help="dataset-quality metrics of embedded samples with one embedder",
        description=METRICS_DESCRIPTION,
        formatter_class=RAW,
    )
    metrics.add_argument("dir", help="run directory, embed folder or one parquet")
    metrics.add_argument("--embedder", default="dlib", help=EMBEDDER_HELP)
    metrics.add_argument("--json", default=None, help="write the metrics to this JSON file")
    metrics.add_argument("--decisions", default=None, help="decisions.parquet (default: found)")
    metrics.add_argument("--calibration", default=None, help="calibration JSON file or folder")
    metrics.add_argument(
        "--workers", type=int, default=0, help="read parts on a Dask cluster of N processes"
    )
    add_set_option(
        metrics, "metric settings, e.g. impostor_pairs=500000, seed=1, metric_threshold=0.6"
    )
    metrics.add_argument("-q", "--quiet", action="store_true", help="no table")
    metrics.set_defaults(func=cmd_metrics)

    calibrate = commands.add_parser(
        "calibrate",
        help="calibrate false-match-rate thresholds of an embedder on LFW",
        description=CALIBRATE_DESCRIPTION,
        formatter_class=RAW,
    )
    calibrate.add_argument("--embedder", default="sface", help=EMBEDDER_HELP)
    calibrate.add_argument("--lfw", default=None, help=LFW_HELP)
    calibrate.add_argument("--people", type=int, default=0, help="seeded subset of people (0: all)")
    calibrate.add_argument("--per-person", type=int, default=10, help="images per person at most")
    calibrate.add_argument("--pairs", type=int, default=2_000_000, help="impostor pairs")
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument("--workers", type=int, default=2, help="processes")
    calibrate.add_argument(
        "--out",
        default=None,
        help="JSON file or folder (default $FACEFOUNDRY_CACHE_DIR/calibration)",
    )
    calibrate.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    calibrate.set_defaults(func=cmd_calibrate)
