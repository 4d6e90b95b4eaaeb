"""The ``facefoundry`` command line: thin wrappers over the stage packages.

One module per command group, named after what users type:

=============  ==============================================================
module         commands
=============  ==============================================================
eval.py        eval lfw, eval bin
faces.py       faces embed
data.py        data lfw
recipe.py      recipe check
run.py         run, stage, report
identities.py  identities
generator.py   generator prepare-lfw | train | sample | init-multi-id |
               train-multi-id | tiny-sd
train.py       train
lfw_shards.py  lfw-shards
filter.py      filter, metrics, calibrate
shards.py      shards verify, shards stats
runs.py        runs gc
=============  ==============================================================

Each module has ``register(commands)``, which adds its parsers and sets
``func(args) -> exit code`` on each; ``_common.py`` holds what they share. Module top
levels import nothing heavy (no torch, OpenCV or stage code): a command imports what it
needs when it runs, so ``facefoundry recipe check`` or ``--help`` stays fast.

Errors are handled here, once: a :class:`~facefoundry.errors.FacefoundryError` prints
``facefoundry: error: <message>`` and exits with its ``exit_code`` (2 for usage and input
errors, 1 for other failures); any other exception prints one line with a hint and
exits 1. ``--debug`` prints the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from facefoundry.errors import FacefoundryError

__all__ = ["GROUPS", "build_parser", "main"]

GROUPS = (
    "eval",
    "faces",
    "data",
    "recipe",
    "run",
    "identities",
    "generator",
    "train",
    "lfw_shards",
    "filter",
    "shards",
    "runs",
)

DESCRIPTION = """\
facefoundry builds identity-consistent synthetic face datasets for face recognition:
identities -> images -> faces + embeddings -> filters -> webdataset shards -> a trained
recognizer -> LFW validation and a report. Data: $FACEFOUNDRY_DATA_DIR/lfw (see README)."""

EPILOG = """\
Every command has --help. An error prints one line, 'facefoundry: error: ...', and
exits 2 for a usage or input error (a bad option, path, recipe or input file), 1 for
any other failure; --debug (anywhere on the line) prints the traceback instead."""

DEBUG_HINT = "run again with --debug for the traceback"


class Parser(argparse.ArgumentParser):
    """argparse with the command line's one-line error format (exit status 2)."""

    def error(self, message: str):
        command = self.prog.partition(" ")[2]
        where = f"{command}: " if command else ""
        self.exit(2, f"facefoundry: error: {where}{message} (see `{self.prog} --help`)\n")


def _add_global_options(parser: argparse.ArgumentParser, default) -> None:
    parser.add_argument(
        "-v", "--verbose", action="store_true", default=default, help="debug logging"
    )
    parser.add_argument(
        "--debug",
        action="store_true",
        default=default,
        help="on an error, print the traceback instead of one line",
    )


def _subparsers(parser: argparse.ArgumentParser):
    """Every parser below ``parser``, once each."""
    seen: set[int] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if id(sub) not in seen:
                    seen.add(id(sub))
                    yield sub
                    yield from _subparsers(sub)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, with every group module's commands."""
    parser = Parser(
        prog="facefoundry",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_global_options(parser, default=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(f"{__name__}.{name}").register(commands)
    # accepted after the command too (`facefoundry run x.yaml --debug`); SUPPRESS keeps
    # the top-level value when a command line does not give them there
    for sub in _subparsers(parser):
        _add_global_options(sub, default=argparse.SUPPRESS)
    return parser


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and error.args:
        text = str(error.args[0])  # str(KeyError) quotes the message
    else:
        text = str(error)
    return text.strip()


def _type_name(error: BaseException) -> str:
    kind = type(error)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def report_error(error: BaseException, expected: bool) -> None:
    """``facefoundry: error: <message>`` on stderr. A FacefoundryError's lines after the
    first (a list of problems, manual steps) follow as they are; any other error is one
    line that names its type and says how to see the traceback."""
    message = _message(error)
    if expected:
        lines = message.splitlines() or [_type_name(error)]
    else:
        text = " ".join(line.strip() for line in message.splitlines() if line.strip())
        lines = [f"{_type_name(error)}{': ' if text else ''}{text} ({DEBUG_HINT})"]
    print("\n".join([f"facefoundry: error: {lines[0]}", *lines[1:]]), file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command line; returns the exit status (argparse exits itself on --help
    and on usage errors, with status 0 and 2)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("facefoundry: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        expected = isinstance(error, FacefoundryError)
        if args.debug:
            traceback.print_exc()
        else:
            report_error(error, expected)
        return error.exit_code if expected else 1
