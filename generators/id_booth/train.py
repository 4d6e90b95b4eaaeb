"""Per-identity ID-Booth fine-tuning: DreamBooth with prior preservation + the triplet
identity loss, LoRA weights only.

Each step takes one instance image (prompt "photo of sks person") and one prior-class
image ("photo of a person") through the UNet at seeded timesteps; total =
MSE_instance + prior_weight * MSE_prior + triplet_weight * (1 - t/T)^2 * triplet.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facefoundry.generators.denoise import predicted_x0
from facefoundry.generators.id_booth.identity_loss import (
    embed_crops,
    locate_faces,
    timestep_weights,
    triplet_loss,
    warp_to_template,
)
from facefoundry.generators.id_booth.lora import add_lora, drop_lora, save_lora
from facefoundry.generators.id_booth.prompts import (
    PromptEmbeddings,
    encode_prompts,
    instance_prompt,
)
from facefoundry.generators.id_booth.settings import IDBoothSettings
from facefoundry.generators.seeds import sample_seed

logger = logging.getLogger(__name__)


def to_model_images(images: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x R x R in [-1, 1] (antialiased when shrinking,
    e.g. 112 px references for the 32 px pixel base)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float()
    tensor = tensor / 127.5 - 1.0
    if tensor.shape[-1] != resolution or tensor.shape[-2] != resolution:
        shrink = tensor.shape[-1] > resolution or tensor.shape[-2] > resolution
        tensor = F.interpolate(
            tensor,
            size=(resolution, resolution),
            mode="bicubic",
            align_corners=False,
            antialias=shrink,
        ).clamp(-1, 1)
    return tensor


@dataclass
class FineTuneResult:
    name: str
    adapter: Path
    history: list[dict] = field(default_factory=list)
    skipped_no_face: int = 0


class IDBoothTrainer:
    """Holds the base pipeline, the prior-class set and the identity network; trains one
    adapter per identity with :meth:`fine_tune`."""

    def __init__(
        self,
        base,
        settings: IDBoothSettings,
        prior_images: np.ndarray,
        identity_model: torch.nn.Module | None = None,
        detector=None,
    ):
        from diffusers import DDPMScheduler

        self.base = base
        self.settings = settings
        self.device = base.unet.device
        self.noise = DDPMScheduler.from_config(base.scheduler_config)
        self.T = self.noise.config.num_train_timesteps
        self.prediction_type = self.noise.config.prediction_type
        self.identity_model = identity_model
        if identity_model is not None:
            identity_model.requires_grad_(False)
            identity_model.eval().to(self.device)
        if settings.face_crop == "detect" and detector is None and identity_model is not None:
            from facefoundry.faces.detect import get_detector

            detector = get_detector("yunet")
        self.detector = detector
        if base.kind == "pixel":  # its instance context is keyed by the identifier token
            base.token = settings.token
        self.prompts = PromptEmbeddings.cat(
            [
                encode_prompts(base, [instance_prompt(settings.token)], settings.resolution),
                encode_prompts(base, [settings.class_prompt], settings.resolution),
            ]
        )
        self.prior_pixels = to_model_images(prior_images, settings.resolution)
        self.prior_latents = self._encode(self.prior_pixels)
        self.prior_embeddings = self._reference_embeddings(self.prior_pixels)
        if self.prior_embeddings is not None and not self.prior_embeddings[1].any():
            logger.warning("no face found in any prior-class image: the triplet term is off")

    def _autocast(self):
        """bf16 autocast on CUDA (mixed_precision auto/bf16), a no-op on CPU."""
        precision = self.settings.mixed_precision
        enabled = self.device.type == "cuda" and precision in ("auto", "bf16", "fp16")
        dtype = torch.float16 if precision == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)

    @torch.no_grad()
    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """Latent means (deterministic) of [-1, 1] images."""
        latents = []
        for start in range(0, len(pixels), 8):
            batch = pixels[start : start + 8].to(self.device)
            latents.append(self.base.vae.encode(batch).latent_dist.mean * self.base.latent_scale)
        return torch.cat(latents)

    @torch.no_grad()
    def _reference_embeddings(self, pixels: torch.Tensor):
        """Identity embeddings of real reference images and a found-face mask."""
        if self.identity_model is None:
            return None
        matrices = locate_faces(pixels, self.settings.face_crop, self.detector)
        found = np.array([m is not None for m in matrices])
        embeddings = torch.zeros(len(pixels), 1, device=self.device)
        if found.any():
            chosen = pixels[torch.from_numpy(found)].to(self.device)
            stacked = torch.from_numpy(np.stack([m for m in matrices if m is not None]))
            embeddings = embed_crops(self.identity_model, warp_to_template(chosen, stacked))
            full = torch.zeros(len(pixels), embeddings.shape[1], device=self.device)
            full[torch.from_numpy(found).to(self.device)] = embeddings
            embeddings = full
        return embeddings, found

    def _identity_term(self, x0_latent, t, positive, negative):
        """(weighted triplet, d(a, p), d(a, n)) for one instance row, or None: no face."""
        image = self.base.vae.decode(x0_latent / self.base.latent_scale).sample.clamp(-1, 1)
        matrix = locate_faces(image, self.settings.face_crop, self.detector)[0]
        if matrix is None:
            return None
        crop = warp_to_template(image, torch.from_numpy(matrix)[None])
        anchor = embed_crops(self.identity_model, crop).float()
        value = triplet_loss(anchor, positive[None], negative[None], self.settings.triplet_margin)
        weight = timestep_weights(t, self.T).to(value.device)
        d_ap = 1 - F.cosine_similarity(anchor, positive[None]).item()
        d_an = 1 - F.cosine_similarity(anchor, negative[None]).item()
        return (weight * value).mean(), d_ap, d_an

    def fine_tune(
        self,
        name: str,
        instance_images: np.ndarray,
        out_dir: str | Path,
        seed: int = 0,
        progress: bool = False,
    ) -> FineTuneResult:
        """Train adapter ``name`` on 1..N instance images; saved under ``out_dir``."""
        from tqdm.auto import tqdm

        settings = self.settings
        instance = to_model_images(instance_images, settings.resolution)
        instance_latents = self._encode(instance)
        references = self._reference_embeddings(instance)
        use_identity = (
            self.identity_model is not None
            and settings.triplet_weight > 0
            and self.prior_embeddings is not None
            and self.prior_embeddings[1].any()
            and references is not None
            and references[1].any()
        )
        # peft draws LoRA A's init from the global generator: seed it, so an adapter does not
        # depend on what ran before it in this process (other identities, a resume)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(seed, 0, 0, f"id_booth-init:{name}"))
            params = add_lora(
                self.base.unet, name, settings.rank, settings.alpha, settings.target_modules
            )
        optimizer = torch.optim.AdamW(
            params, lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        result = FineTuneResult(name, Path(out_dir))
        priors_with_face = (
            np.flatnonzero(self.prior_embeddings[1]) if use_identity else np.arange(0)
        )
        self.base.unet.train()
        steps = settings.train_steps
        for step in tqdm(range(steps), desc=f"ID-Booth {name}", disable=not progress):
            lr = settings.learning_rate * 0.5 * (1 + math.cos(math.pi * step / steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            g = torch.Generator().manual_seed(sample_seed(seed, step, 0, f"id_booth:{name}"))
            i = int(torch.randint(0, len(instance), (1,), generator=g))
            j = int(torch.randint(0, len(self.prior_latents), (1,), generator=g))
            x0 = torch.cat([instance_latents[i : i + 1], self.prior_latents[j : j + 1]])
            noise = torch.randn(x0.shape, generator=g).to(self.device)
            t = torch.randint(0, self.T, (2,), generator=g).to(self.device)
            noisy = self.noise.add_noise(x0, noise, t)
            with self._autocast():
                output = self.base.unet(noisy, t, **self.prompts.unet_kwargs()).sample.float()
            if self.prediction_type == "v_prediction":
                target = self.noise.get_velocity(x0, noise, t)
            elif self.prediction_type == "sample":
                target = x0
            else:
                target = noise
            mse = F.mse_loss(output, target.float(), reduction="none").mean((1, 2, 3))
            loss = mse[0] + settings.prior_weight * mse[1]
            entry = {
                "step": step + 1,
                "t": int(t[0]),
                "mse_instance": mse[0].item(),
                "mse_prior": mse[1].item(),
            }
            if use_identity and references[1][i]:
                jj = int(priors_with_face[j % len(priors_with_face)])
                x0_hat = predicted_x0(
                    self.noise.alphas_cumprod, noisy[:1], output[:1], t[:1], self.prediction_type
                )
                with self._autocast():
                    term = self._identity_term(
                        x0_hat, t[:1], references[0][i], self.prior_embeddings[0][jj]
                    )
                if term is None:
                    result.skipped_no_face += 1
                else:
                    weighted, d_ap, d_an = term
                    loss = loss + settings.triplet_weight * weighted
                    entry.update(triplet=weighted.item(), d_ap=d_ap, d_an=d_an)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            entry["loss"] = float(loss.detach())
            result.history.append(entry)
        self.base.unet.eval()
        meta = {
            "name": name,
            "rank": settings.rank,
            "alpha": settings.alpha,
            "target_modules": list(settings.target_modules),
            "steps": steps,
            "base": str(self.base.folder),
            "token": settings.token,
            "instance_images": len(instance),
            "skipped_no_face": result.skipped_no_face,
        }
        result.adapter = save_lora(self.base.unet, name, out_dir, meta)
        drop_lora(self.base.unet, name)
        return result
