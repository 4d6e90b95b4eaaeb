"""One training step of the multi-identity adapter.

loss = w_diff * diffusion (epsilon or v, per the scheduler) + w_id * identity loss +
w_nce * InfoNCE, the identity terms on faces cropped from the predicted x0 at low noise
only. Only the adapter (tokenizer + identity attention) trains; the UNet, the VAE and the
identity network stay frozen but pass gradients through.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from facefoundry.generators.multi_id.attention import IdentityAdapter, adapter_parameters
from facefoundry.generators.multi_id.losses import (
    crop_faces,
    identity_loss,
    info_nce,
    low_noise_weight,
    predicted_x0,
)
from facefoundry.generators.multi_id.model import load_adapter, save_adapter
from facefoundry.generators.multi_id.settings import MultiIdTrainSettings


@dataclass
class MultiIdBatch:
    """images (B, 3, H, W) in [-1, 1]; identities (B, K, id_dim) conditions; boxes (B, K, 4)
    normalised; prompt_embeds (B, L, C) or None (a zero token); targets (B, K, D) identity
    network embeddings of the true faces, or None to embed the true crops here."""

    images: torch.Tensor
    identities: torch.Tensor
    boxes: torch.Tensor
    prompt_embeds: torch.Tensor | None = None
    targets: torch.Tensor | None = None


def make_optimizer(adapter: IdentityAdapter, lr: float = 1e-4) -> torch.optim.Optimizer:
    return torch.optim.AdamW(adapter_parameters(adapter), lr=lr, weight_decay=0.0)


def null_prompt(unet, batch: int, device, dtype) -> torch.Tensor:
    """A single zero text token: the UNet needs encoder states even without a prompt."""
    return torch.zeros(batch, 1, unet.config.cross_attention_dim, device=device, dtype=dtype)


def training_step(
    unet,
    adapter: IdentityAdapter,
    scheduler,
    batch: MultiIdBatch,
    id_network: nn.Module,
    optimizer: torch.optim.Optimizer,
    settings: MultiIdTrainSettings,
    vae=None,
    negatives: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> dict:
    """One optimiser step; returns the loss terms as floats (and how many images were
    low-noise). ``negatives``: (M, D) extra identity-network embeddings for InfoNCE."""
    id_network.requires_grad_(False)
    device = batch.images.device
    images = batch.images
    b, k = batch.boxes.shape[:2]
    if vae is not None:
        with torch.no_grad():
            scale = getattr(vae.config, "scaling_factor", 1.0)
            clean = vae.encode(images).latent_dist.sample(generator) * scale
    else:
        clean = images
    noise = torch.randn(clean.shape, generator=generator, device=device, dtype=clean.dtype)
    total_steps = scheduler.config.num_train_timesteps
    t = torch.randint(0, total_steps, (b,), generator=generator, device=device)
    noisy = scheduler.add_noise(clean, noise, t)
    prompt = batch.prompt_embeds
    if prompt is None:
        prompt = null_prompt(unet, b, device, noisy.dtype)
    with adapter.condition(batch.identities, batch.boxes, noisy.shape[-2:]):
        output = unet(noisy, t, encoder_hidden_states=prompt).sample
    kind = scheduler.config.prediction_type
    target = scheduler.get_velocity(clean, noise, t) if kind == "v_prediction" else noise
    diffusion = F.mse_loss(output.float(), target.float())
    weight = low_noise_weight(t, total_steps, settings.low_noise_fraction)
    id_term = nce_term = torch.zeros((), device=device)
    low = torch.nonzero(weight > 0).flatten()
    wants_id = settings.id_loss_weight > 0 or settings.infonce_weight > 0
    if len(low) and wants_id:
        x0 = predicted_x0(scheduler, noisy[low], output[low], t[low])
        if vae is not None:
            x0 = vae.decode(x0.to(vae.dtype) / scale).sample
        pixels = x0.float().clamp(-1, 1)
        boxes = batch.boxes[low]
        predicted = id_network(crop_faces(pixels, boxes)).view(len(low), k, -1)
        if batch.targets is not None:
            targets = batch.targets[low].float()
        else:
            with torch.no_grad():
                targets = id_network(crop_faces(images[low].float(), boxes)).view(len(low), k, -1)
        id_term, assignments = identity_loss(predicted, targets)
        order = torch.as_tensor(
            [[row * k + int(col) for col in a] for row, a in enumerate(assignments)],
            device=device,
        ).flatten()
        positives = targets.reshape(len(low) * k, -1)[order]
        nce_term = info_nce(
            predicted.reshape(len(low) * k, -1), positives, negatives, settings.temperature
        )
    loss = (
        settings.diffusion_weight * diffusion
        + settings.id_loss_weight * id_term
        + settings.infonce_weight * nce_term
    )
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return {
        "loss": loss.item(),
        "diffusion": diffusion.item(),
        "identity": id_term.item(),
        "infonce": nce_term.item(),
        "low_noise_images": len(low),
    }


__all__ = [
    "MultiIdBatch",
    "load_adapter",
    "make_optimizer",
    "null_prompt",
    "save_adapter",
    "training_step",
]
