"""ID-Booth on a GPU: LoRA fine-tune step time and 30-step 512 px sampling throughput of
a full-size SD 1.5 configuration (random weights: speed only).

Usage: python benchmarks/gpu_id_booth.py [--smoke]
  full:  SD 1.5 UNet (320/640/1280/1280, 768-d cross-attention), SD VAE, CLIP ViT-L/14
         text encoder config; iResNet-50 identity network; bf16 autocast; LoRA rank 4.
         Step = instance + prior through the UNet, predicted x0 decoded by the VAE,
         differentiable crop, triplet term, backward, AdamW on the LoRA weights.
  smoke: tiny components on CPU, to check that the script runs.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def full_size_base(device: str):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from facefoundry.generators.id_booth.base import BaseComponents
    from facefoundry.generators.id_booth.tiny import _byte_vocab

    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    vae = AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
    )
    vocab = _byte_vocab()
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    text = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            max_position_embeddings=77,
        )
    )
    scheduler = {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "prediction_type": "epsilon",
    }
    for module in (unet, vae, text):
        module.requires_grad_(False)
        module.eval().to(device)
    return BaseComponents("sd", unet, vae, [text], [tokenizer], scheduler, Path("random-sd15"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    from facefoundry.generators.id_booth.base import load_base
    from facefoundry.generators.id_booth.sample import sample_images
    from facefoundry.generators.id_booth.settings import IDBoothSettings
    from facefoundry.generators.id_booth.train import IDBoothTrainer
    from facefoundry.recognition.backbones import get_model

    device = "cpu" if args.smoke else "cuda"
    torch.manual_seed(0)
    if args.smoke:
        from facefoundry.generators.id_booth.tiny import make_tiny_sd

        base = load_base(make_tiny_sd("/tmp/facefoundry-tiny-sd"), device)
        resolution, identity = 32, get_model("mbf_small", num_features=32)
        steps, sample_batch, sample_count = 3, 2, 2
    else:
        base = full_size_base(device)
        resolution, identity = 512, get_model("r50", num_features=512)
        steps, sample_batch, sample_count = 12, 8, 16
    settings = IDBoothSettings(
        base=str(base.folder), resolution=resolution, train_steps=steps + 3, face_crop="aligned"
    )
    rng = np.random.default_rng(0)
    prior = rng.integers(0, 256, (2, resolution, resolution, 3), dtype=np.uint8)
    instance = rng.integers(0, 256, (1, resolution, resolution, 3), dtype=np.uint8)
    trainer = IDBoothTrainer(base, settings, prior, identity)
    # time the steps themselves: a 3-step warm-up run, then the timed run
    trainer.settings = settings.model_copy(update={"train_steps": 3})
    trainer.fine_tune("warm", instance, "/tmp/facefoundry-lora-warm")
    trainer.settings = settings.model_copy(update={"train_steps": steps})
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = trainer.fine_tune("timed", instance, "/tmp/facefoundry-lora-timed")
    if device == "cuda":
        torch.cuda.synchronize()
    step_seconds = (time.perf_counter() - started) / steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else 0.0
    from facefoundry.generators.id_booth.lora import load_lora

    load_lora(base.unet, "timed", "/tmp/facefoundry-lora-timed")
    prompts = ["face portrait photo of sks person, forest background"] * sample_count
    dtype = torch.float32 if args.smoke else torch.bfloat16
    sample_images(
        base, prompts[:2], [0, 1], steps=2, resolution=resolution, batch_size=2, dtype=dtype
    )
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    images = sample_images(
        base,
        prompts,
        list(range(sample_count)),
        negative_prompt="blurry",
        steps=30,
        guidance_scale=5.0,
        resolution=resolution,
        batch_size=sample_batch,
        dtype=dtype,
    )
    if device == "cuda":
        torch.cuda.synchronize()
    sample_seconds = time.perf_counter() - started
    figures = {
        "card": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (smoke)",
        "resolution": resolution,
        "unet_params_m": round(sum(p.numel() for p in base.unet.parameters()) / 1e6, 1),
        "lora_rank": settings.rank,
        "lora_step_s": round(step_seconds, 4),
        "lora_steps_timed": steps,
        "triplet_terms": sum("triplet" in h for h in result.history),
        "train_peak_gib": round(peak, 2),
        "sampling_steps": 30,
        "guidance_scale": 5.0,
        "sample_batch": sample_batch,
        "img_per_s": round(len(images) / sample_seconds, 3),
        "dtype": "bfloat16 autocast" if device == "cuda" else "float32",
    }
    print(json.dumps(figures), flush=True)


if __name__ == "__main__":
    main()
