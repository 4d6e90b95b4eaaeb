"""The errors a user can fix, under one base class.

Raise a :class:`FacefoundryError` (or a subclass) when the user can do something about
the failure: a missing or mistyped path, a bad recipe, a model folder that is not
there, a corrupt input file, missing benchmark data. The message says what is wrong and
what to do, in one line where possible::

    raise UsageError(f"shard directory {path} does not exist: give a run's shards/ folder")

The command line (``facefoundry.flows.cli.main``) catches these once and prints
``facefoundry: error: <message>`` without a traceback (``--debug`` shows it), exiting
with :attr:`FacefoundryError.exit_code`: 2 for :class:`UsageError` (what was asked for
cannot be used), 1 for other failures. Anything else is a bug or an environment problem
and keeps its type; the command line still reports it in one line, with a hint to
re-run with ``--debug``.

Classes that callers already catch as ``ValueError`` or ``FileNotFoundError`` keep that
as a second base: ``class RecipeError(UsageError, ValueError)``. This module imports
nothing, so any module can use it.
"""

from __future__ import annotations

__all__ = ["FacefoundryError", "UsageError"]


class FacefoundryError(Exception):
    """A failure the user can fix; the message says what is wrong and what to do."""

    exit_code: int = 1


class UsageError(FacefoundryError):
    """What was asked for cannot be used: a bad option, path, recipe or input file."""

    exit_code: int = 2
