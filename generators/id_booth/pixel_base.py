"""A trained pixel-space base for ID-Booth: an IDiff-Face model folder seen as a tiny
"Stable Diffusion" pipeline, so the unchanged ID-Booth code path (a peft LoRA per
identity, DreamBooth prior preservation, the triplet identity loss) runs on it.

No SD weights exist on this machine; the default IDiff-Face model
(``models/idiff-face-lfw``: a diffusers ``UNet2DConditionModel`` trained on LFW
DevTrain, 32 px pixel space, v-prediction, cosine schedule) is the trained base. The
mapping, component by component:

- **VAE**: none. Latents are the [-1, 1] pixels (:class:`IdentityVAE`: encode and decode
  are the identity, scale factor 1), so the trainer's "decode x0" is x0 itself.
- **Text encoder**: IDiff-Face has no text, only a context of ``context_tokens`` x
  ``context_dim`` made by its ``id_conditioner`` from a 128-d SFace vector, and a learned
  *empty* context for "no identity" (its classifier-free guidance null). Prompts map to
  contexts by one rule (:meth:`PixelBase.encode_prompts`):

  * a prompt without the identifier token (the class prompt "photo of a person", the
    negative prompt, "") -> the **empty context**: the model's unconditional face
    distribution, which is what DreamBooth's class prompt means ("any person");
  * a prompt with the token ("photo of sks person", every variation prompt) -> the
    **instance context** ``id_conditioner(r)``, ``r`` a fixed unit vector drawn from a
    seed derived from the token string alone. ``r`` is DreamBooth's rare token: a code
    the conditioner accepts whose meaning owes nothing to the person being learnt
    (no photo or embedding of the instance enters it); the LoRA has to bind it to the
    person. Variation words (background, pose, ...) have no counterpart here and are
    ignored: this base cannot be prompted.

- **Time-embedding conditioning**: this UNet also adds the flattened context to its
  timestep embedding (``class_labels``); :class:`PromptEmbeddings` carries it, so both
  identity paths see the same context.
- **Scheduler**: the model's own training schedule (DDPM config, v-prediction, cosine).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch

# LoRA targets for this UNet: every attention projection (self and identity
# cross-attention at 8 x 8) and the projection of the context into the time embedding,
# i.e. both places where IDiff-Face injects identity
PIXEL_TARGET_MODULES = (
    "to_q",
    "to_k",
    "to_v",
    "to_out.0",
    "class_embedding.linear_1",
    "class_embedding.linear_2",
)


def is_pixel_base(folder: str | Path) -> bool:
    """An IDiff-Face pixel-space model folder (``idiff_face.json``, not latent)."""
    from facefoundry.generators.idiff_face.model import CONFIG_NAME, read_config

    folder = Path(folder)
    return (folder / CONFIG_NAME).is_file() and not read_config(folder).latent


class IdentityVAE(torch.nn.Module):
    """The VAE of a pixel-space model: latents are pixels."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(block_out_channels=(1,), scaling_factor=1.0)

    def encode(self, pixels: torch.Tensor):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=pixels))

    def decode(self, latents: torch.Tensor):
        return SimpleNamespace(sample=latents)


def token_code(token: str, dim: int) -> torch.Tensor:
    """The fixed unit vector of the identifier token (seeded by the token string)."""
    seed = int.from_bytes(hashlib.sha256(f"id_booth-token:{token}".encode()).digest()[:8], "big")
    vector = torch.randn(dim, generator=torch.Generator().manual_seed(seed % (2**63)))
    return vector / vector.norm()


@dataclass
class PixelBase:
    """``BaseComponents``' interface for an IDiff-Face model (kind ``"pixel"``)."""

    unet: torch.nn.Module
    conditioner: torch.nn.Module
    scheduler_config: dict
    folder: Path
    resolution: int
    uses_class_labels: bool
    kind: str = "pixel"
    vae: torch.nn.Module = field(default_factory=IdentityVAE)
    text_encoders: list = field(default_factory=list)
    tokenizers: list = field(default_factory=list)
    token: str = "sks"

    vae_scale_factor = 1
    latent_scale = 1.0

    @torch.no_grad()
    def contexts(self, prompts: list[str]) -> torch.Tensor:
        """The context of each prompt (see the module docstring for the rule)."""
        config = self.conditioner.config
        device = self.unet.device
        empty = self.conditioner.empty_context.detach().to(device)
        code = token_code(self.token, config.id_dim).to(device)
        instance = self.conditioner(code[None])[0]
        rows = [instance if self.token in prompt.split() else empty for prompt in prompts]
        return torch.stack(rows) if rows else empty[:0]

    def encode_prompts(self, prompts: list[str], resolution: int | None = None):
        from facefoundry.generators.id_booth.prompts import PromptEmbeddings

        if resolution is not None and resolution != self.resolution:
            raise ValueError(
                f"{self.folder} is a {self.resolution} px pixel-space model: set "
                f"generate.resolution to {self.resolution} (got {resolution})"
            )
        states = self.contexts(prompts)
        labels = states.flatten(1) if self.uses_class_labels else None
        return PromptEmbeddings(states, class_labels=labels)


def load_pixel_base(
    folder: str | Path, device: str | torch.device = "cpu", token: str = "sks"
) -> PixelBase:
    """Load an IDiff-Face pixel-space folder as a frozen ID-Booth base."""
    from facefoundry.generators.idiff_face.model import IDiffFaceModel
    from facefoundry.generators.idiff_face.schedule import training_scheduler

    folder = Path(folder)
    model = IDiffFaceModel.from_pretrained(folder)
    if model.config.latent:
        raise ValueError(f"{folder} is a latent IDiff-Face model: only pixel-space ones are bases")
    model.requires_grad_(False)
    model.eval().to(device)
    return PixelBase(
        unet=model.unet,
        conditioner=model.conditioner,
        scheduler_config=dict(training_scheduler(model.config).config),
        folder=folder,
        resolution=model.config.sample_size,
        uses_class_labels=model.config.id_in_time_embedding,
        token=token,
    )
