"""IDiff-Face on a GPU: paper-scale sampling throughput, the demo's generation stage on
CUDA, and time-boxed training of the default model (several variants side by side).

Usage (on the GPU machine, from the repo root):
  python benchmarks/gpu_idiff.py throughput --out OUT      # paper config, batch 256, bf16
  python benchmarks/gpu_idiff.py demo-gen --out OUT        # recipes/demo.yaml generation
  python benchmarks/gpu_idiff.py train --data NPZ --out OUT --seconds S --variant NAME
Each part prints one JSON line; ``train`` also writes OUT/NAME.tar (the exported EMA
model, weights stored as float16 to fit the transfer limit, plus the loss history).
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _card() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def throughput(args: argparse.Namespace) -> dict:
    """Images/s of the paper-scale config: DPM-Solver++ 25 steps vs DDPM-1000, bf16."""
    import numpy as np
    from diffusers import VQModel

    from facefoundry.generators.idiff_face.config import PAPER_CONFIG
    from facefoundry.generators.idiff_face.model import IDiffFaceModel, count_parameters
    from facefoundry.generators.idiff_face.pipeline import IDiffFacePipeline

    torch.manual_seed(0)
    model = IDiffFaceModel(PAPER_CONFIG)
    # an LDM VQ-f4-shaped autoencoder (128 px <-> 3 x 32 x 32), random weights
    vae = VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(128, 256, 512),
        layers_per_block=2,
        latent_channels=3,
        num_vq_embeddings=8192,
        vq_embed_dim=3,
        norm_num_groups=32,
    )
    batch = args.batch
    count = {"dpmsolver++": 4 * batch, "ddpm": batch}  # the fast sampler over 4 batches
    identities = np.random.default_rng(0).standard_normal((4 * batch, 512)).astype(np.float32)
    identities /= np.linalg.norm(identities, axis=1, keepdims=True)
    seeds = list(range(4 * batch))
    figures = {
        "card": _card(),
        "unet_params_m": round(count_parameters(model.unet) / 1e6, 1),
        "batch": batch,
        "dtype": "bfloat16",
    }
    for scheduler, steps in (("dpmsolver++", 25), ("ddpm", 1000)):
        pipe = IDiffFacePipeline(model, scheduler, vae=vae, device="cuda", dtype=torch.bfloat16)
        pipe.optimise_for_gpu(channels_last=True)
        pipe(identities[:8], seeds[:8], steps=2, batch_size=8)  # warm-up
        _sync()
        started = time.perf_counter()
        n = count[scheduler]
        images = pipe(identities[:n], seeds[:n], steps=steps, batch_size=batch)
        _sync()
        seconds = time.perf_counter() - started
        figures[f"{scheduler}_{steps}_img_per_s"] = round(len(images) / seconds, 2)
        figures[f"{scheduler}_{steps}_seconds"] = round(seconds, 2)
    figures["speedup_vs_ddpm1000"] = round(
        figures["dpmsolver++_25_img_per_s"] / figures["ddpm_1000_img_per_s"], 1
    )
    figures["hours_per_500k_images_fast"] = round(
        500_000 / figures["dpmsolver++_25_img_per_s"] / 3600, 2
    )
    return figures


def demo_gen(args: argparse.Namespace) -> dict:
    """The demo recipe's generation stage (100 identities x 8) with the model on CUDA."""
    from facefoundry.flows.config import load_recipe
    from facefoundry.generators.identities import make_identities
    from facefoundry.generators.idiff_face.generate import generate_chunk

    recipe = load_recipe(REPO / "recipes" / "demo.yaml")
    settings = recipe.generate.model_copy(
        update={"model": str(REPO / recipe.generate.model), "device": "cuda"}
    )
    out = Path(args.out) / "demo-gen"
    out.mkdir(parents=True, exist_ok=True)
    table = make_identities(
        recipe.identities.count,
        128,
        seed=recipe.seed,
        method=recipe.identities.method,
        tau=recipe.identities.tau,
    )
    table_path = table.save(out / "identities.parquet")
    ids = [int(i) for i in table.ids]
    chunk = settings.chunk_identities
    started = time.perf_counter()
    for part, start in enumerate(range(0, len(ids), chunk)):
        generate_chunk(table_path, ids[start : start + chunk], out, part, settings, recipe.seed)
    _sync()
    seconds = time.perf_counter() - started
    return {
        "card": _card(),
        "images": len(ids) * settings.samples_per_identity,
        "generate_seconds": round(seconds, 2),
        "img_per_s": round(len(ids) * settings.samples_per_identity / seconds, 1),
        "note": "includes model load and JPEG/tar/parquet writing",
    }


VARIANTS = {
    # the committed default's config, continued from its weights
    "A": {"init": "models/idiff-face-lfw", "config": {}, "lr": 1e-3},
    # wider, identity cross-attention at 16 x 16 and 8 x 8
    "B": {
        "init": None,
        "config": {"block_out_channels": (48, 96, 96), "attention_levels": (1, 2)},
        "lr": 6e-4,
    },
    # wider still, attention at 8 x 8 only
    "C": {
        "init": None,
        "config": {"block_out_channels": (64, 128, 128), "attention_levels": (2,)},
        "lr": 6e-4,
    },
}


def train(args: argparse.Namespace) -> dict:
    """Train one variant for ``--seconds``; the step count is fitted to the measured rate
    so the cosine schedule ends on time."""
    from safetensors.torch import load_file, save_file

    from facefoundry.generators.idiff_face.config import IDiffFaceConfig
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from facefoundry.generators.idiff_face.train import Trainer, TrainSettings, _lr_lambda
    from facefoundry.generators.training_data import FaceTrainingSet

    started = time.perf_counter()
    torch.set_num_threads(4)
    variant = dict(VARIANTS[args.variant])
    if args.init:
        variant["init"] = args.init
    if args.lr:
        variant["lr"] = args.lr
    data = FaceTrainingSet.load(args.data)
    if variant["init"]:
        initial = IDiffFaceModel.from_pretrained(REPO / variant["init"])
        config = initial.config
    else:
        initial = None
        config = IDiffFaceConfig(
            **variant["config"],
            conditioning_embedder=data.embedder.get("name", "sface"),
            conditioning_checksum=data.embedder.get("checksum", ""),
        )
    torch.manual_seed(0)
    model = IDiffFaceModel(config)
    if initial is not None:
        model.load_state_dict(initial.state_dict())
    out = Path(args.work) / f"train-{args.variant}"
    settings = TrainSettings(
        steps=10**6,
        batch_size=args.batch,
        learning_rate=variant["lr"],
        warmup_steps=200,
        checkpoint_every=10**9,
        log_every=50,
    )
    trainer = Trainer(model, data, settings, out)
    probe = 40
    for _ in range(probe):
        trainer.train_step()
    _sync()
    probe_start = time.perf_counter()
    for _ in range(probe):
        trainer.train_step()
    _sync()
    rate = probe / (time.perf_counter() - probe_start)
    left = args.seconds - (time.perf_counter() - started) - 15
    steps = trainer.step + max(100, int(rate * left * 0.97))
    trainer.settings = settings.model_copy(update={"steps": steps, "checkpoint_every": 2000})
    trainer.lr_factor = _lr_lambda(trainer.settings)
    result = trainer.fit(progress=False, max_seconds=left + 10)
    (out / "loss_history.json").write_text(json.dumps(trainer.history))
    # float16 copies of the exported weights keep the transfer under its size limit
    for path in (out / "model").rglob("*.safetensors"):
        tensors = load_file(str(path))
        save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, path)
    with tarfile.open(Path(args.out) / f"{args.variant}.tar", "w") as tar:
        tar.add(out / "model", arcname="model")
        tar.add(out / "loss_history.json", arcname="loss_history.json")
    return {
        "card": _card(),
        "variant": args.variant,
        "config": config.model_dump(mode="json"),
        "batch": args.batch,
        "steps_per_s": round(rate, 2),
        "steps": result["step"],
        "seconds": round(time.perf_counter() - started, 1),
        "last_loss": result["last_loss"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("part", choices=["throughput", "demo-gen", "train"])
    parser.add_argument("--out", required=True)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--data")
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--init", help="start from this model folder (overrides the variant)")
    parser.add_argument("--lr", type=float, help="peak learning rate (overrides the variant)")
    parser.add_argument("--work", default="/tmp/facefoundry-gpu", help="training folders")
    parser.add_argument("--variant", choices=sorted(VARIANTS), default="A")
    args = parser.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    part = {"throughput": throughput, "demo-gen": demo_gen, "train": train}[args.part]
    figures = {"part": args.part, **part(args)}
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
