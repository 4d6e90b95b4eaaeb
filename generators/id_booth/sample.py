"""Sampling the base pipeline (with or without an identity's LoRA): prompts + per-sample
seeds -> RGB images, classifier-free guidance against a negative prompt.

Written out step by step (encode -> seeded noise -> denoise -> decode) rather than
through a diffusers pipeline class, so SD and SDXL share one loop and each image's
initial noise comes from its own seed, and on CPU every model call has the same shape
(``fixed_batches``): any single image can be regenerated alone, to the byte.
"""

from __future__ import annotations

import numpy as np
import torch

from facefoundry.generators.id_booth.prompts import PromptEmbeddings, encode_prompts
from facefoundry.generators.seeds import fixed_batches, generators_for

SCHEDULERS = {
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "unipc": ("UniPCMultistepScheduler", {}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
}


def make_scheduler(name: str, config: dict):
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; use one of {sorted(SCHEDULERS)}")
    class_name, extra = SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(config, **extra)


@torch.no_grad()
def sample_images(
    base,
    prompts: list[str],
    seeds: list[int],
    negative_prompt: str = "",
    steps: int = 30,
    guidance_scale: float = 5.0,
    resolution: int = 512,
    scheduler: str = "dpmsolver++",
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
) -> np.ndarray:
    """N prompts and N seeds -> N x R x R x 3 uint8 images."""
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    device = base.unet.device
    latent_size = resolution // base.vae_scale_factor
    channels = base.unet.config.in_channels
    out = []
    for index, real in fixed_batches(len(prompts), batch_size, device):
        batch_prompts = [prompts[i] for i in index]
        generators = generators_for([seeds[i] for i in index])
        latents = torch.stack(
            [torch.randn((channels, latent_size, latent_size), generator=g) for g in generators]
        ).to(device)
        use_cfg = guidance_scale != 1.0
        conditional = encode_prompts(base, batch_prompts, resolution)
        if use_cfg:
            negative = encode_prompts(base, [negative_prompt] * len(batch_prompts), resolution)
            conditional = PromptEmbeddings.cat([negative, conditional])
        sampler = make_scheduler(scheduler, base.scheduler_config)
        sampler.set_timesteps(steps, device=device)
        latents = latents * sampler.init_noise_sigma
        for t in sampler.timesteps:
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            model_in = sampler.scale_model_input(model_in, t)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                output = base.unet(model_in, t, **conditional.unet_kwargs()).sample
            output = output.float()
            if use_cfg:
                uncond, cond = output.chunk(2)
                output = uncond + guidance_scale * (cond - uncond)
            latents = sampler.step(output, t, latents).prev_sample
        images = base.vae.decode(latents / base.latent_scale).sample.float().clamp(-1, 1)
        images = images[:real]
        out.append(((images + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, resolution, resolution, 3), np.uint8)
