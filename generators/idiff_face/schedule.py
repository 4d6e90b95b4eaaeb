"""Noise schedules and samplers built from the model's own training schedule."""

from __future__ import annotations

import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UniPCMultistepScheduler,
)

from facefoundry.generators.idiff_face.config import IDiffFaceConfig

SCHEDULERS = ("ddpm", "ddim", "dpmsolver++", "sde-dpmsolver++", "unipc")


def _noise_kwargs(config: IDiffFaceConfig) -> dict:
    return {
        "num_train_timesteps": config.num_train_timesteps,
        "beta_schedule": config.beta_schedule,
        "beta_start": config.beta_start,
        "beta_end": config.beta_end,
        "prediction_type": config.prediction_type,
    }


def training_scheduler(config: IDiffFaceConfig) -> DDPMScheduler:
    return DDPMScheduler(**_noise_kwargs(config), clip_sample=False)


def make_sampler(config: IDiffFaceConfig, name: str = "dpmsolver++"):
    """A diffusers scheduler for sampling: ddpm (the reference, 1000 ancestral steps),
    ddim, dpmsolver++, its stochastic form sde-dpmsolver++ (fresh noise each step, drawn
    from each image's own generator) or unipc (8-50 steps)."""
    kwargs = _noise_kwargs(config)
    if name == "ddpm":
        return DDPMScheduler(**kwargs, clip_sample=False)
    if name == "ddim":
        return DDIMScheduler(**kwargs, clip_sample=False, set_alpha_to_one=False)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler(**kwargs, algorithm_type="dpmsolver++", solver_order=2)
    if name == "sde-dpmsolver++":
        return DPMSolverMultistepScheduler(
            **kwargs, algorithm_type="sde-dpmsolver++", solver_order=2
        )
    if name == "unipc":
        return UniPCMultistepScheduler(**kwargs)
    raise ValueError(f"unknown scheduler {name!r}; use one of {SCHEDULERS}")


def min_snr_weights(
    scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float | None
) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) for the scheduler's prediction type;
    ones (the plain loss) when ``gamma`` is None or 0, where a cap of 0 would zero it."""
    if gamma is not None and gamma < 0:
        raise ValueError(f"min_snr_gamma is None or 0 (off) or more, not {gamma}")
    if not gamma:
        return torch.ones(len(timesteps))
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
    snr = alphas / (1.0 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr
    if kind == "v_prediction":
        return clipped / (snr + 1.0)
    return clipped
