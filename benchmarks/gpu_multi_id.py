"""GPU throughput of the multi-identity generator at SD 1.5 scale (for an H100/H200).

Usage: python benchmarks/gpu_multi_id.py            (CUDA, bf16, < 90 s on an H200)
       python benchmarks/gpu_multi_id.py --smoke    (CPU, tiny UNet, 2 steps: a wiring check)
Full run: UNet2DConditionModel with SD 1.5's shape (block_out_channels 320/640/1280/1280,
cross_attention_dim 768, 64 x 64 x 4 latents = 512 px images), random weights, bf16, plus
the identity adapter (8 tokens per identity, 512-d identities); prompt embeddings random
77 x 768; DPM-Solver++ 25 steps; batch 8; K = 1, 2, 4 faces per image; one short warm-up
per K. No VAE decode (latents only): images/s is UNet + adapter + sampler throughput.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import finish, machine


def build_unet(smoke: bool, device: str, dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    if smoke:
        config = dict(
            sample_size=16,
            block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            cross_attention_dim=32,
            attention_head_dim=4,
            norm_num_groups=4,
        )
    else:  # SD 1.5 (the library defaults are SD 1.x but for the 768-d text width)
        config = dict(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
    with torch.device(device):
        unet = UNet2DConditionModel(in_channels=4, out_channels=4, **config)
    return unet.to(dtype).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()

    from diffusers import DDPMScheduler

    from facefoundry.generators.multi_id.attention import install_identity_adapter
    from facefoundry.generators.multi_id.generate import sample_groups
    from facefoundry.generators.multi_id.layout import sample_layout
    from facefoundry.generators.multi_id.model import make_sampler

    if args.smoke:
        torch.set_num_threads(1)
        device, dtype, steps, batch = "cpu", torch.float32, 2, 2
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --smoke on CPU")
        device, dtype, steps, batch = "cuda", torch.bfloat16, args.steps, args.batch
        torch.backends.cuda.matmul.allow_tf32 = True
    id_dim = 512
    started = time.perf_counter()
    unet = build_unet(args.smoke, device, dtype)
    adapter = install_identity_adapter(unet, id_dim, num_tokens=8)
    adapter.to(device)
    training = DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon"
    )
    sampler = make_sampler(training, "dpmsolver++")
    figures: dict = {
        "machine": machine(),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "smoke": args.smoke,
        "dtype": str(dtype).replace("torch.", ""),
        "unet_parameters_m": round(sum(p.numel() for p in unet.parameters()) / 1e6, 1),
        "adapter_parameters_m": round(sum(p.numel() for p in adapter.parameters()) / 1e6, 2),
        "latent_px": unet.config.sample_size,
        "image_px": unet.config.sample_size * 8,
        "vae_decode": False,
        "batch": batch,
        "steps": steps,
        "sampler": "dpmsolver++",
        "build_s": round(time.perf_counter() - started, 1),
    }
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randn(77, unet.config.cross_attention_dim, generator=generator)
    for k in (1, 2, 4):
        box_max = 0.45 if k < 4 else 0.4
        layouts = np.stack([sample_layout(k, s, 0.25, box_max) for s in range(batch)])
        ids = np.random.default_rng(k).standard_normal((batch, k, id_dim)).astype(np.float32)
        ids /= np.linalg.norm(ids, axis=-1, keepdims=True)
        sample_groups(
            unet, adapter, sampler, ids, layouts, list(range(batch)), 2, prompt.to(device, dtype)
        )  # warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        sample_groups(
            unet,
            adapter,
            sampler,
            ids,
            layouts,
            list(range(batch)),
            steps,
            prompt.to(device, dtype),
        )
        if device == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        figures[f"k{k}"] = {
            "images_per_s": round(batch / seconds, 3),
            "faces_per_s": round(batch * k / seconds, 3),
            "s_per_batch": round(seconds, 3),
        }
    if device == "cuda":
        figures["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    finish(figures)


if __name__ == "__main__":
    main()
