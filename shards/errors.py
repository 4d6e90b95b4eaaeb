"""Errors raised by the shards package, each with a message that says what to do."""

from __future__ import annotations

from facefoundry.errors import FacefoundryError


class ShardError(FacefoundryError):
    """Base class for every error raised by shards/."""


class EmptyDatasetError(ShardError, ValueError):
    """Raised when a split, block or dataset would have no samples at all."""


class SampleOrderError(ShardError, ValueError):
    """Raised when samples do not arrive in strictly ascending key order."""


class ResumeMismatchError(ShardError):
    """Raised when a complete shard on disk does not match the input given on resume."""


class UnsafeTarError(ShardError):
    """Raised when a tar holds a member that readers must refuse.

    Absolute paths, ``..`` components, links, devices, directories and members
    over the size limit are refused: they can escape the output directory when
    extracted or exhaust memory when read.
    """


class FinalizeError(ShardError):
    """Raised when finalize finds an incomplete or inconsistent set of shards.

    ``problems`` lists every problem found, one string each.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        head = f"finalize found {len(self.problems)} problem(s):\n  " + "\n  ".join(self.problems)
        super().__init__(head)


class DamagedShardError(ShardError):
    """A shard that is missing, truncated or altered since it was written; the message
    names the shard and what differs."""
