"""The clean sample a denoiser's output implies, for every prediction type: the identity
losses of ID-Booth and the multi-ID generator both judge this predicted x0."""

from __future__ import annotations

import torch


def predicted_x0(
    alphas_cumprod: torch.Tensor,
    noisy: torch.Tensor,
    model_output: torch.Tensor,
    timesteps: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """x0 from x_t and the output at ``timesteps`` (differentiable, float32)."""
    alpha = alphas_cumprod.to(noisy.device)[timesteps].float().view(-1, 1, 1, 1)
    sqrt_a, sqrt_1ma = alpha.sqrt(), (1 - alpha).sqrt()
    noisy, model_output = noisy.float(), model_output.float()
    if prediction_type == "epsilon":
        return (noisy - sqrt_1ma * model_output) / sqrt_a
    if prediction_type == "v_prediction":
        return sqrt_a * noisy - sqrt_1ma * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unsupported prediction_type {prediction_type!r}")
