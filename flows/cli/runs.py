"""``facefoundry runs gc``: the only command that deletes what a run had made.

A changed setting never deletes a stage's output: it is set aside under
``RUN/.superseded/<stage>/<inputs hash>/`` and comes back when the old settings do.
This command lists those kept outputs with their sizes and, with ``--delete``, removes
them.
"""

from __future__ import annotations

import argparse
import json

from facefoundry.flows.cli._common import run_folder

GC_HELP = """\
List the stage outputs a run keeps for settings it no longer uses (a changed
recipe sets them aside under RUN/.superseded/<stage>/<inputs hash>/, and a run with
the old settings restores them instead of recomputing). Without --delete this is a
dry run: it prints what would be deleted and how much space that frees."""


def _human(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _gc(args: argparse.Namespace) -> int:
    from facefoundry.flows.markers import prune_superseded

    folder = run_folder(args.run_dir)
    found = prune_superseded(folder, dry_run=not args.delete)
    total = sum(size for _, size in found)
    if args.json:
        rows = [{"path": str(p), "bytes": s} for p, s in found]
        print(json.dumps({"deleted": args.delete, "outputs": rows, "bytes": total}))
        return 0
    verb = "deleted" if args.delete else "would delete"
    for path, size in found:
        print(f"{verb} {path.relative_to(folder)}  {_human(size)}")
    print(
        f"{verb} {len(found)} kept output(s), {_human(total)}"
        + ("" if args.delete else " (dry run: add --delete)")
    )
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``runs gc RUN_DIR [--delete]``."""
    runs = commands.add_parser(
        "runs",
        help="housekeeping of run folders (kept outputs of older settings)",
        description="Commands on run folders.",
    )
    actions = runs.add_subparsers(dest="runs_command", metavar="COMMAND", required=True)
    gc = actions.add_parser(
        "gc",
        help="list (or --delete) stage outputs kept for settings a run no longer uses",
        description=GC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    gc.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, e.g. runs/demo")
    gc.add_argument("--delete", action="store_true", help="delete them (default: dry run)")
    gc.add_argument("--json", action="store_true", help="print JSON instead of text")
    gc.set_defaults(func=_gc)
