"""``facefoundry data lfw``: download benchmark data."""

from __future__ import annotations

import argparse
from pathlib import Path

LFW_DESCRIPTION = """\
Download LFW deep-funneled and its protocol files (pairs, people lists) into
DEST/lfw, checking each against its published SHA-256. Offline, it prints the
manual steps instead. Point the other commands at it with
export FACEFOUNDRY_DATA_DIR=DEST."""

# The default (evaluation.lfw_download.DEFAULT_BASE_URL) is looked up when the command
# runs: importing that module for --help costs more than the help is worth.
BASE_URL_HELP = "download from this mirror instead of the LFW site (vis-www.cs.umass.edu/lfw)"


def cmd_data_lfw(args: argparse.Namespace) -> int:
    from facefoundry.evaluation.lfw_download import DEFAULT_BASE_URL, download_lfw

    target = download_lfw(args.dest, args.base_url or DEFAULT_BASE_URL)
    print(f"LFW ready in {target}; export FACEFOUNDRY_DATA_DIR={Path(args.dest).resolve()}")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    data = commands.add_parser(
        "data",
        help="get benchmark data",
        description="Download the data the benchmarks and the filter calibration read.",
    )
    datasets = data.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    lfw = datasets.add_parser(
        "lfw",
        help="download LFW deep-funneled + protocol files (prints manual steps offline)",
        description=LFW_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lfw.add_argument("--dest", required=True, help="data root; LFW goes to DEST/lfw")
    lfw.add_argument("--base-url", default=None, help=BASE_URL_HELP)
    lfw.set_defaults(func=cmd_data_lfw)
