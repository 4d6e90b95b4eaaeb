"""``facefoundry train``: train a face recognizer on shards and export it."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from facefoundry.errors import UsageError
from facefoundry.flows.cli._common import LFW_HELP, RAW, add_set_option, existing_dir, load_recipe

DESCRIPTION = """\
Train the recipe's `train` section on SHARDS_DIR (a finalized shard directory: a
run's shards/ folder or `facefoundry lfw-shards --out`), validating on LFW each
epoch; resume from OUT/checkpoint; export OUT/backbone.safetensors and
OUT/model.onnx, with OUT/history.json and OUT/curves.png. The shard directory is
checked before any work starts. Evaluate with:
facefoundry eval lfw --embedder onnx:OUT/model.onnx"""

SHARDS_HINT = (
    "give a finalized shard directory (a run's shards/ folder, or make one with "
    "`facefoundry lfw-shards --out DIR`)"
)


def check_shards(path: str | Path) -> Path:
    """A finalized shard directory (its dataset.json), checked before LFW validation
    pairs are built or a model is made."""
    from facefoundry.shards.layout import DATASET_JSON

    directory = existing_dir(path, "shard directory", SHARDS_HINT)
    if not (directory / DATASET_JSON).is_file():
        raise UsageError(
            f"shard directory {directory} has no {DATASET_JSON}: it is not finalized "
            f"(`facefoundry shards stats {directory}` shows what is there); {SHARDS_HINT}"
        )
    return directory


def cmd_train(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, args.set)
    check_shards(args.shards)
    from facefoundry.recognition.train import train_recognizer

    out = train_recognizer(args.shards, args.out, recipe.train, args.lfw, resume=not args.restart)
    print(json.dumps({"model": str(out), "onnx": str(Path(out) / "model.onnx")}))
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train a recognizer on shards, export ONNX",
        description=DESCRIPTION,
        formatter_class=RAW,
    )
    train.add_argument("shards", metavar="SHARDS_DIR", help="finalized shard directory")
    train.add_argument("--out", required=True, help="output folder (checkpoint, model, curves)")
    train.add_argument(
        "--recipe", default=None, help="recipe whose `train` section to use (default: defaults)"
    )
    add_set_option(train, "e.g. --set train.epochs=5 --set train.backbone=r50")
    train.add_argument("--lfw", default=None, help=LFW_HELP)
    train.add_argument(
        "--restart", action="store_true", help="ignore OUT/checkpoint and start from scratch"
    )
    train.set_defaults(func=cmd_train)
