"""What several command modules share: option help, input checks, JSON output.

Light on purpose: the parser is built from these on every ``facefoundry`` call, so
nothing here imports torch, OpenCV or the stage packages at module level.
"""

from __future__ import annotations

import argparse
import difflib
import json
from pathlib import Path

from facefoundry.errors import UsageError

DETECTOR_HELP = "face detector: yunet (default), dlib, or insightface:PATH.onnx (SCRFD)"
LFW_HELP = "LFW folder (default: $FACEFOUNDRY_DATA_DIR/lfw; get it with `facefoundry data lfw`)"
RAW = argparse.RawDescriptionHelpFormatter


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not positive: give 1 or more")
    return value


def at_least_one(text: str) -> float:
    """argparse type: a number of at least 1 (a pool size, a ratio)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text!r}") from None
    if not value >= 1:
        raise argparse.ArgumentTypeError(f"expected a number >= 1, got {text}")
    return value


def check_models(embedder: str | None = None, detector: str | None = None) -> None:
    """Load the embedder and detector named on the command line in this process, before
    any worker starts: an unknown name or a missing model file is then one clear error,
    not a broken worker pool. Loaded models are cached, so this costs a load at most."""
    from facefoundry.faces.detect import get_detector
    from facefoundry.faces.embedders import get_embedder

    for option, spec, load in (
        ("--embedder", embedder, get_embedder),
        ("--detector", detector, get_detector),
    ):
        if spec is None:
            continue
        try:
            load(spec)
        except (ValueError, FileNotFoundError) as error:
            if isinstance(error, UsageError):
                raise
            raise UsageError(f"{option} {spec}: {error}") from error


def add_set_option(parser: argparse.ArgumentParser, help: str) -> None:
    """The repeatable ``--set KEY=VALUE`` override option."""
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help=f"{help} (repeatable)"
    )


def write_json(document: dict, path: str | Path | None) -> None:
    """Write ``document`` to ``path`` (creating its folder); nothing when ``path`` is None."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(document, indent=2) + "\n")


def existing_file(path: str | Path, what: str, hint: str = "") -> Path:
    """``path`` if it is a file; else a :class:`UsageError` naming ``what`` it should be."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder, not a file{_hint(hint)}")
    if not path.is_file():
        raise UsageError(f"{what} {path} does not exist{_hint(hint)}")
    return path


def existing_dir(path: str | Path, what: str, hint: str = "") -> Path:
    """``path`` if it is a folder; else a :class:`UsageError` naming ``what`` it should be."""
    path = Path(path)
    if path.is_file():
        raise UsageError(f"{what} {path} is a file, not a folder{_hint(hint)}")
    if not path.is_dir():
        raise UsageError(f"{what} {path} does not exist{_hint(hint)}")
    return path


def _hint(hint: str) -> str:
    return f": {hint}" if hint else ""


def check_recipe_file(path: str | Path | None) -> None:
    """Refuse what ``load_recipe`` cannot read (a folder, non-UTF-8 bytes) with a clear line.

    A missing file is left to ``load_recipe``, which already says so as a RecipeError.
    """
    if not path:
        return
    path = Path(path)
    if path.is_dir():
        examples = sorted(path.glob("*.yaml"))
        example = f", e.g. {examples[0]}" if examples else " such as recipes/demo.yaml"
        raise UsageError(f"recipe {path} is a folder: give one recipe YAML file{example}")
    if not path.is_file():
        return
    try:
        path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageError(
            f"recipe {path} is not UTF-8 text (byte 0x{error.object[error.start]:02x} at "
            f"offset {error.start}): save it as UTF-8"
        ) from None
    except OSError as error:
        raise UsageError(f"recipe {path} cannot be read: {error.strerror or error}") from None


def load_recipe(path: str | Path | None, overrides: list[str] | None = None):
    """``flows.config.load_recipe`` after :func:`check_recipe_file`: the one way every
    command reads a recipe."""
    from facefoundry.flows.config import load_recipe as load

    check_recipe_file(path)
    return load(path, overrides or [])


def run_folder(path: str | Path) -> Path:
    """``path`` if it holds a run (its resolved recipe); else a :class:`UsageError` that
    suggests the nearest run folder beside it. Creates nothing."""
    from facefoundry.flows.run_dir import RunDir

    path = Path(path)
    if RunDir(path).recipe.is_file():
        return path
    state = "has no run in it (no recipe.resolved.yaml)" if path.is_dir() else "does not exist"
    parent = path.parent
    runs = (
        sorted(p.name for p in parent.iterdir() if RunDir(p).recipe.is_file())
        if parent.is_dir()
        else []
    )
    close = difflib.get_close_matches(path.name, runs, n=1)
    if close:
        advice = f"did you mean {parent / close[0]}?"
    elif runs:
        advice = f"runs in {parent}: {', '.join(runs[:5])}"
    else:
        advice = "give a folder made by `facefoundry run` (RUNS_ROOT/<recipe name>)"
    raise UsageError(f"run folder {path} {state}: {advice}")
