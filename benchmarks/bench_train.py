"""Recognizer training: loader vs trainer throughput, ONNX parity, and the authentic
LFW baseline (train on DevTrain people, validate on DevTest people and View 2).

Usage: python benchmarks/bench_train.py [--quick] [--minutes 30]
  quick: throughput + ONNX parity on 600 real DevTrain faces (< 2 minutes).
  full:  also trains the CPU recipe on all DevTrain faces for --minutes, then scores
         the exported ONNX model with the LFW protocol on DevTest and View 2.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from common import finish, machine

CPU_RECIPE = dict(
    backbone="mbf_small",
    embedding_dim=128,
    loss="cosface",
    scale=32.0,
    margin=0.35,
    batch_size=128,
    learning_rate=0.1,
    warmup_epochs=1.0,
    loader_workers=1,
)


def throughput(shards_dir, settings_cls, steps: int = 8) -> dict:
    from facefoundry.recognition.train import RecognizerTrainer

    settings = settings_cls(**{**CPU_RECIPE, "val_pairs": None, "epochs": 1})
    trainer = RecognizerTrainer(shards_dir, "/tmp/ff-bench-train", settings)
    started, count = time.perf_counter(), 0
    batches = []
    for images, labels in trainer.batches(0):
        batches.append((images, labels))
        count += len(labels)
        if len(batches) >= steps:
            break
    loader_rate = count / (time.perf_counter() - started)
    trainer.train_step(*batches[0])  # warm-up
    started = time.perf_counter()
    for images, labels in batches[1:]:
        trainer.train_step(images, labels)
    train_rate = sum(len(b[1]) for b in batches[1:]) / (time.perf_counter() - started)
    return {
        "loader_img_per_s": round(loader_rate, 1),
        "train_img_per_s": round(train_rate, 1),
        "loader_over_train_ratio": round(loader_rate / train_rate, 2),
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default=None, help="run folder (default: cache)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training")
    args = parser.parse_args()

    from safetensors.torch import load_file

    from facefoundry.evaluation.lfw import cache_dir
    from facefoundry.evaluation.lfw_shards import write_lfw_shards
    from facefoundry.evaluation.verify import evaluate_lfw
    from facefoundry.recognition.export import onnx_parity
    from facefoundry.recognition.train import FRTrainSettings, train_recognizer

    figures: dict = {"machine": machine(), "quick": args.quick}
    limit = 300 if args.quick else None
    started = time.perf_counter()
    shards_dir = write_lfw_shards(
        cache_dir() / "shards" / f"lfw-devtrain-{limit or 'all'}",
        limit_people=limit,
        progress=not args.quick,
    )
    figures["prepare_shards_seconds"] = round(time.perf_counter() - started, 1)
    figures["train_images"] = json.loads((shards_dir / "sizes.json").read_text())
    for threads in (1, 2):  # OpenMP threads degrade badly when the cores are shared
        torch.set_num_threads(threads)
        figures[f"threads_{threads}"] = throughput(shards_dir, FRTrainSettings)
    best = max((figures["threads_1"], figures["threads_2"]), key=lambda r: r["train_img_per_s"])
    figures.update(
        {
            k: best[k]
            for k in (
                "loader_img_per_s",
                "train_img_per_s",
                "loader_over_train_ratio",
                "torch_threads",
            )
        }
    )
    torch.set_num_threads(args.threads)

    out = args.out or str(
        cache_dir() / "runs" / ("bench-train-quick" if args.quick else "bench-train")
    )
    settings = FRTrainSettings(
        **{
            **CPU_RECIPE,
            "epochs": 1 if args.quick else args.epochs,
            "max_minutes": 1.0 if args.quick else args.minutes,
            "val_pairs": None if args.quick else "devtest",
        }
    )
    started = time.perf_counter()
    model_dir = train_recognizer(shards_dir, out, settings, resume=False, progress=not args.quick)
    figures["train_seconds"] = round(time.perf_counter() - started, 1)
    from facefoundry.recognition.backbones import get_model

    backbone = get_model(settings.backbone, num_features=settings.embedding_dim)
    backbone.load_state_dict(load_file(str(model_dir / "backbone.safetensors")))
    faces = np.random.default_rng(0).integers(0, 256, (16, 112, 112, 3), dtype=np.uint8)
    figures["onnx_parity_cos"] = round(onnx_parity(backbone, model_dir / "model.onnx", faces), 6)
    history = json.loads((model_dir / "history.json").read_text())
    figures["epochs_done"] = len(history)
    figures["history"] = [
        {
            k: (round(v, 4) if isinstance(v, float) else v)
            for k, v in h.items()
            if k in ("epoch", "loss", "val_accuracy", "img_per_s", "seconds")
        }
        for h in history
    ]
    if not args.quick:
        for pairs in ("devtest", "view2"):
            result = evaluate_lfw(f"onnx:{model_dir / 'model.onnx'}", pairs, progress=False)
            figures[f"lfw_{pairs}_accuracy"] = round(result["accuracy"], 4)
            figures[f"lfw_{pairs}_accuracy_std"] = round(result["accuracy_std"], 4)
            figures[f"lfw_{pairs}_auc"] = round(result["auc"], 4)
            print(
                f"LFW {pairs}: {100 * result['accuracy']:.2f} +- "
                f"{100 * result['accuracy_std']:.2f}",
                flush=True,
            )
    finish(figures)


if __name__ == "__main__":
    main()
