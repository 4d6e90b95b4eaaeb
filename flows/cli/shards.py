"""``facefoundry shards verify DIR`` and ``facefoundry shards stats DIR`` (thin: the logic
is in shards/)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from facefoundry.flows.cli._common import RAW, existing_dir

VERIFY_HELP = """\
Check a finalized shard directory and print every problem found:
every tar against its parquet manifest (sample keys and order, sha256 of each
payload, identities), tar size and sha256 against the stats file, member
safety (no absolute or '..' paths, links or oversized members), no duplicate
keys across shards, labels contiguous 0..C-1 with one label per identity,
and sizes.json, the wids indexes and dataset.json against the shards.
Reads only; writes nothing.
Exit status: 0 when sound, 1 when any problem was found (a folder without
shards included), 2 when DIR does not exist."""

STATS_HELP = """\
Print the shard directory's counts per split (shards, kept and rejected
samples, reject reasons, bytes) and, once finalized, the class count and
quality figures from dataset.json. Works on unfinished directories too.
Reads only; writes nothing."""

DIR_HINT = "give a shard directory (a run's shards/ folder, or `facefoundry lfw-shards --out`)"


def _verify(args: argparse.Namespace) -> int:
    existing_dir(args.dir, "shard directory", DIR_HINT)
    from facefoundry.shards import verify_dataset

    problems = verify_dataset(
        args.dir, max_member_bytes=args.max_member_bytes, progress=args.progress
    )
    for problem in problems:
        print(problem)
    if problems:
        print(f"FAILED: {len(problems)} problem(s) in {args.dir}", file=sys.stderr)
        return 1
    print(f"OK: {args.dir} verified")
    return 0


def _stats(args: argparse.Namespace) -> int:
    existing_dir(args.dir, "shard directory", DIR_HINT)
    from facefoundry.shards import dataset_stats, format_stats

    stats = dataset_stats(args.dir)
    print(json.dumps(stats, indent=2, sort_keys=True) if args.json else format_stats(stats))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``shards verify DIR`` and ``shards stats DIR``; each sets ``func(args) -> exit code``."""
    shards = commands.add_parser(
        "shards",
        help="check and summarise a shard directory",
        description="Commands on a shard directory (webdataset tars + parquet manifests).",
    )
    actions = shards.add_subparsers(dest="shards_command", metavar="COMMAND", required=True)
    verify = actions.add_parser(
        "verify",
        help="verify every shard against its manifest; exit 1 on any problem",
        description=VERIFY_HELP,
        formatter_class=RAW,
    )
    verify.add_argument("dir", type=Path, metavar="DIR", help="the shard directory")
    verify.add_argument(
        "--max-member-bytes",
        type=int,
        default=64 * 2**20,
        help="refuse tar members larger than this many bytes (default: 64 MiB)",
    )
    verify.add_argument("--progress", action="store_true", help="show a progress bar on stderr")
    verify.set_defaults(func=_verify)
    stats = actions.add_parser(
        "stats",
        help="print counts, reject reasons and quality figures",
        description=STATS_HELP,
        formatter_class=RAW,
    )
    stats.add_argument("dir", type=Path, metavar="DIR", help="the shard directory")
    stats.add_argument("--json", action="store_true", help="print JSON instead of text")
    stats.set_defaults(func=_stats)
