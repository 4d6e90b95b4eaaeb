"""``facefoundry lfw-shards``: real-data shards from LFW people."""

from __future__ import annotations

import argparse
import json

from facefoundry.flows.cli._common import LFW_HELP

DESCRIPTION = """\
Write webdataset shards of real LFW faces (the authentic baseline to compare a
synthetic dataset with): reads the people listed in --people from the LFW folder,
detects, aligns and crops their faces, and writes a finalized shard directory at
--out (tars, parquet manifests, dataset.json) that `facefoundry train` reads. An
existing finalized directory is reused."""


def cmd_lfw_shards(args: argparse.Namespace) -> int:
    from facefoundry.evaluation.lfw_shards import write_lfw_shards

    out = write_lfw_shards(args.out, args.lfw, args.people, args.workers)
    print(json.dumps({"shards": str(out)}))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    lfw_shards = commands.add_parser(
        "lfw-shards",
        help="real-data shards from LFW people (the authentic baseline)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    lfw_shards.add_argument("--out", required=True, help="shard directory to write")
    lfw_shards.add_argument(
        "--people",
        default="peopleDevTrain.txt",
        help="LFW people list (default: peopleDevTrain.txt, keeping DevTest people unseen)",
    )
    lfw_shards.add_argument("--lfw", default=None, help=LFW_HELP)
    lfw_shards.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    lfw_shards.set_defaults(func=cmd_lfw_shards)
