"""The ``facefoundry`` command line: thin wrappers over the stage packages."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from faces.embedders import EMBEDDER_HELP

DESCRIPTION = """\
facefoundry builds identity-consistent synthetic face datasets for face recognition:
identities -> images -> faces + embeddings -> filters -> webdataset shards -> a trained
recognizer -> LFW validation and a report. Data: $FACEFOUNDRY_DATA_DIR/lfw (see README)."""


def _write_json(figures: dict, path: str | None) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(figures, indent=2) + "\n")


def _print_verification(figures: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{figures['benchmark']} - {figures['embedder']}")
    for column in ("accuracy", "AUC", "EER", "TAR@FAR=1e-3", "pairs", "undetected", "seconds"):
        table.add_column(column, justify="right")
    table.add_row(
        f"{100 * figures['accuracy']:.2f} +- {100 * figures['accuracy_std']:.2f}",
        f"{figures['auc']:.4f}",
        f"{100 * figures['eer']:.2f}%",
        f"{100 * figures['tar_at_far_1e-3']:.2f}%",
        str(figures["pairs"]),
        str(figures["undetected"]),
        f"{figures['seconds']:.1f}",
    )
    Console().print(table)


def cmd_eval_lfw(args: argparse.Namespace) -> int:
    from evaluation.verify import evaluate_lfw

    folds = [int(f) - 1 for f in args.folds.split(",")] if args.folds else None
    figures = evaluate_lfw(
        args.embedder,
        args.pairs,
        args.lfw,
        args.detector,
        args.workers,
        flip_tta=not args.no_flip,
        folds=folds,
        progress=not args.quiet,
    )
    _print_verification(figures)
    _write_json(figures, args.json)
    return 0


def cmd_eval_bin(args: argparse.Namespace) -> int:
    from evaluation.verify import evaluate_bin

    results = []
    for path in args.paths:
        figures = evaluate_bin(path, args.embedder, flip_tta=not args.no_flip)
        _print_verification(figures)
        results.append(figures)
    _write_json(results[0] if len(results) == 1 else {"results": results}, args.json)
    return 0


def _iter_inputs(source: Path):
    from faces.io import IMAGE_SUFFIXES

    if source.is_dir():
        for path in sorted(source.rglob("*")):
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield str(path.relative_to(source)), path
    elif source.name.endswith((".tgz", ".tar.gz", ".tar")):
        import tarfile

        with tarfile.open(source) as tar:
            for member in tar:
                if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                    handle = tar.extractfile(member)
                    yield member.name, handle.read() if handle else b""
    else:
        raise SystemExit(f"facefoundry faces embed: {source} is not a folder or a .tgz/.tar")


def cmd_faces_embed(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    from faces import get_embedder, process_images_parallel, result_to_table

    items = list(_iter_inputs(Path(args.source)))
    if not items:
        print(f"no images found in {args.source}", file=sys.stderr)
        return 1
    result = process_images_parallel(
        items,
        args.detector,
        args.embedder,
        workers=args.workers,
        no_face="reject",
        policy=args.selection,
        progress=not args.quiet,
        description="embed",
    )
    table = result_to_table(result, get_embedder(args.embedder).describe())
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, out)
    print(json.dumps({"images": len(items), "outcomes": result.summary(), "out": str(out)}))
    return 0


def cmd_data_lfw(args: argparse.Namespace) -> int:
    from evaluation.lfw_download import OfflineError, download_lfw

    try:
        target = download_lfw(args.dest, args.base_url)
    except OfflineError as error:
        print(str(error), file=sys.stderr)
        return 2
    print(f"LFW ready in {target}; export FACEFOUNDRY_DATA_DIR={Path(args.dest).resolve()}")
    return 0


def cmd_recipe_check(args: argparse.Namespace) -> int:
    import yaml

    from flows.config import load_recipe

    recipe = load_recipe(args.recipe, args.set)
    print(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from evaluation.lfw_download import DEFAULT_BASE_URL

    parser = argparse.ArgumentParser(
        prog="facefoundry",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    evaluate = commands.add_parser("eval", help="verification benchmarks (LFW, .bin sets)")
    eval_sub = evaluate.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    lfw = eval_sub.add_parser(
        "lfw",
        help="LFW 10-fold verification of an embedder",
        description="Detect (YuNet), align (ArcFace template), embed with flip TTA, and run the "
        "10-fold LFW protocol: accuracy +- std, AUC, EER, TAR@FAR=1e-3. Faces the detector "
        "misses are embedded from a centred crop and counted as 'undetected'.",
    )
    lfw.add_argument("--embedder", default="sface", help=EMBEDDER_HELP)
    lfw.add_argument(
        "--pairs",
        default="view2",
        choices=["view2", "devtest", "devtrain"],
        help="view2: pairs.txt, 6,000 pairs in 10 folds (default); devtest: "
        "pairsDevTest.txt, 1,000 pairs of people disjoint from DevTrain",
    )
    lfw.add_argument("--lfw", default=None, help="LFW folder (default $FACEFOUNDRY_DATA_DIR/lfw)")
    lfw.add_argument("--detector", default="yunet", help="yunet | dlib | insightface:PATH.onnx")
    lfw.add_argument("--workers", type=int, default=2, help="processes (models load once each)")
    lfw.add_argument("--folds", default=None, help="only these folds, e.g. 1 or 1,2 (1-based)")
    lfw.add_argument("--no-flip", action="store_true", help="skip horizontal-flip TTA")
    lfw.add_argument("--json", default=None, help="also write the figures to this JSON file")
    lfw.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    lfw.set_defaults(func=cmd_eval_lfw)

    binset = eval_sub.add_parser(
        "bin",
        help="insightface .bin verification sets (lfw, cfp_fp, agedb_30, ...)",
        description="Score insightface .bin sets (pre-aligned 112x112 pairs, 10 contiguous folds). "
        "A .bin is a Python pickle and unpickling can run code: only pass files you trust; "
        "they are read only from the paths given here, never discovered.",
    )
    binset.add_argument("paths", nargs="+", help="explicit .bin paths (trusted files only)")
    binset.add_argument("--embedder", default="sface", help=EMBEDDER_HELP)
    binset.add_argument("--no-flip", action="store_true", help="skip horizontal-flip TTA")
    binset.add_argument("--json", default=None, help="write the figures to this JSON file")
    binset.set_defaults(func=cmd_eval_bin)

    faces = commands.add_parser("faces", help="detection, alignment, embeddings")
    faces_sub = faces.add_subparsers(dest="action", required=True, metavar="ACTION")
    embed = faces_sub.add_parser(
        "embed",
        help="embed every image of a folder or archive into a parquet table",
        description="Writes one row per image: key, status (ok, no_face, bad_image, "
        "bad_embedding), error, detection score, box, 5 landmarks and the embedding.",
    )
    embed.add_argument("source", help="a folder of images or a .tgz/.tar archive")
    embed.add_argument("--out", required=True, help="output .parquet file")
    embed.add_argument("--embedder", default="sface", help=EMBEDDER_HELP)
    embed.add_argument("--detector", default="yunet", help="yunet | dlib | insightface:PATH.onnx")
    embed.add_argument(
        "--selection",
        default="central",
        choices=["central", "largest", "score"],
        help="which face when there are several",
    )
    embed.add_argument("--workers", type=int, default=2)
    embed.add_argument("-q", "--quiet", action="store_true")
    embed.set_defaults(func=cmd_faces_embed)

    data = commands.add_parser("data", help="get benchmark data")
    data_sub = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    data_lfw = data_sub.add_parser(
        "lfw", help="download LFW deep-funneled + protocol files (prints manual steps offline)"
    )
    data_lfw.add_argument("--dest", required=True, help="data root; LFW goes to DEST/lfw")
    data_lfw.add_argument("--base-url", default=DEFAULT_BASE_URL)
    data_lfw.set_defaults(func=cmd_data_lfw)

    recipe = commands.add_parser("recipe", help="recipes")
    recipe_sub = recipe.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = recipe_sub.add_parser("check", help="validate a recipe and print it resolved")
    check.add_argument("recipe", nargs="?", default=None)
    check.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field, e.g. --set faces.embedder=dlib (repeatable)",
    )
    check.set_defaults(func=cmd_recipe_check)

    from flows import cli_filters, cli_models, cli_run, cli_shards

    cli_run.register(commands)
    cli_models.register(commands)
    cli_filters.register(commands)
    cli_shards.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    from flows.config import RecipeError

    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except RecipeError as error:
        print(f"facefoundry: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
