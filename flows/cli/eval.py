"""``facefoundry eval lfw`` and ``facefoundry eval bin``: verification benchmarks."""

from __future__ import annotations

import argparse
import pickle

from facefoundry.errors import UsageError
from facefoundry.faces.specs import EMBEDDER_HELP
from facefoundry.flows.cli._common import (
    DETECTOR_HELP,
    LFW_HELP,
    RAW,
    check_models,
    existing_file,
    write_json,
)

LFW_DESCRIPTION = """\
Score an embedder on LFW with the 10-fold protocol. Reads the LFW images and
protocol files (--lfw, default $FACEFOUNDRY_DATA_DIR/lfw); detects faces (YuNet),
aligns them to the ArcFace template, embeds them with flip TTA and prints accuracy
+- std, AUC, EER and TAR@FAR=1e-3 (--json also writes them). Faces the detector
misses are embedded from a centred crop and counted as 'undetected'."""

BIN_DESCRIPTION = """\
Score an embedder on insightface .bin verification sets (pre-aligned 112x112 pairs,
10 contiguous folds) and print the figures (--json also writes them). A .bin is a
Python pickle and unpickling can run code: only pass files you trust; they are read
only from the paths given here, never discovered."""


def print_verification(figures: dict) -> None:
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
    from facefoundry.evaluation.verify import evaluate_lfw

    folds = [int(f) - 1 for f in args.folds.split(",")] if args.folds else None
    check_models(args.embedder, args.detector)
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
    print_verification(figures)
    write_json(figures, args.json)
    return 0


def cmd_eval_bin(args: argparse.Namespace) -> int:
    from facefoundry.evaluation.verify import evaluate_bin

    for path in args.paths:  # every path before the first (slow) evaluation
        existing_file(path, "verification set", "give the path of an insightface .bin file")
    check_models(args.embedder)
    results = []
    for path in args.paths:
        try:
            figures = evaluate_bin(path, args.embedder, flip_tta=not args.no_flip)
        except (pickle.UnpicklingError, EOFError) as error:  # only unpickling raises these
            raise UsageError(
                f"{path} is not an insightface .bin verification set ({str(error) or 'truncated'})"
            ) from error
        print_verification(figures)
        results.append(figures)
    write_json(results[0] if len(results) == 1 else {"results": results}, args.json)
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="verification benchmarks (LFW, .bin sets)",
        description="Score an identity embedder on face verification benchmarks.",
    )
    benchmarks = evaluate.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    lfw = benchmarks.add_parser(
        "lfw",
        help="LFW 10-fold verification of an embedder",
        description=LFW_DESCRIPTION,
        formatter_class=RAW,
    )
    lfw.add_argument("--embedder", default="sface", help=EMBEDDER_HELP)
    lfw.add_argument(
        "--pairs",
        default="view2",
        choices=["view2", "devtest", "devtrain"],
        help="view2: pairs.txt, 6,000 pairs in 10 folds (default); devtest: "
        "pairsDevTest.txt, 1,000 pairs of people disjoint from DevTrain",
    )
    lfw.add_argument("--lfw", default=None, help=LFW_HELP)
    lfw.add_argument("--detector", default="yunet", help=DETECTOR_HELP)
    lfw.add_argument("--workers", type=int, default=2, help="processes (models load once each)")
    lfw.add_argument("--folds", default=None, help="only these folds, e.g. 1 or 1,2 (1-based)")
    lfw.add_argument("--no-flip", action="store_true", help="skip horizontal-flip TTA")
    lfw.add_argument("--json", default=None, help="also write the figures to this JSON file")
    lfw.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    lfw.set_defaults(func=cmd_eval_lfw)

    binset = benchmarks.add_parser(
        "bin",
        help="insightface .bin verification sets (lfw, cfp_fp, agedb_30, ...)",
        description=BIN_DESCRIPTION,
        formatter_class=RAW,
    )
    binset.add_argument("paths", nargs="+", help="explicit .bin paths (trusted files only)")
    binset.add_argument("--embedder", default="sface", help=EMBEDDER_HELP)
    binset.add_argument("--no-flip", action="store_true", help="skip horizontal-flip TTA")
    binset.add_argument(
        "--json",
        default=None,
        help='write the figures to this JSON file (several sets: {"results": [...]})',
    )
    binset.set_defaults(func=cmd_eval_bin)
