"""Prompts: the DreamBooth instance/class prompts, the variation templates, and text
encoding for SD (one CLIP encoder) and SDXL (two encoders + pooled embedding)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from facefoundry.generators.id_booth.settings import BACKGROUNDS, EXPRESSIONS, LIGHTING, POSES


@dataclass
class PromptEmbeddings:
    """Cross-attention states, plus SDXL's pooled text embedding and time ids, or (the
    IDiff-Face pixel base) the context added to the timestep embedding."""

    states: torch.Tensor
    added: dict | None = None
    class_labels: torch.Tensor | None = None

    def take(self, index: torch.Tensor | slice) -> PromptEmbeddings:
        added = {k: v[index] for k, v in self.added.items()} if self.added else None
        labels = self.class_labels[index] if self.class_labels is not None else None
        return PromptEmbeddings(self.states[index], added, labels)

    @staticmethod
    def cat(parts: list[PromptEmbeddings]) -> PromptEmbeddings:
        added = None
        if parts[0].added:
            added = {k: torch.cat([p.added[k] for p in parts]) for k in parts[0].added}
        labels = None
        if parts[0].class_labels is not None:
            labels = torch.cat([p.class_labels for p in parts])
        return PromptEmbeddings(torch.cat([p.states for p in parts]), added, labels)

    def unet_kwargs(self) -> dict:
        """Keyword arguments of ``UNet2DConditionModel.forward`` for these prompts."""
        kwargs = {"encoder_hidden_states": self.states, "added_cond_kwargs": self.added}
        if self.class_labels is not None:
            kwargs["class_labels"] = self.class_labels
        return kwargs


def instance_prompt(token: str) -> str:
    return f"photo of {token} person"


def variation_prompts(
    templates: tuple[str, ...], token: str, count: int, seed: int, sex: str = ""
) -> list[str]:
    """``count`` prompts varying background, pose, expression and lighting (seeded)."""
    rng = np.random.default_rng(seed)
    prompts = []
    for index in range(count):
        template = templates[index % len(templates)]
        prompts.append(
            template.format(
                token=token,
                sex=f"{sex} " if sex else "",
                background=rng.choice(BACKGROUNDS),
                pose=rng.choice(POSES),
                expression=rng.choice(EXPRESSIONS),
                lighting=rng.choice(LIGHTING),
            )
        )
    return prompts


@torch.no_grad()
def encode_prompts(base, prompts: list[str], resolution: int) -> PromptEmbeddings:
    """Text -> UNet conditioning with the base pipeline's own encoders (the pixel base,
    ``pixel_base.PixelBase``, maps prompts to IDiff-Face contexts instead)."""
    if base.kind == "pixel":
        return base.encode_prompts(prompts, resolution)
    device = base.unet.device
    hidden, pooled = [], None
    for tokenizer, encoder in zip(base.tokenizers, base.text_encoders, strict=True):
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(device)
        if base.kind == "sd":
            hidden.append(encoder(ids)[0])
        else:  # SDXL: penultimate hidden states of both encoders, pooled from the second
            output = encoder(ids, output_hidden_states=True)
            hidden.append(output.hidden_states[-2])
            pooled = output[0]
    states = torch.cat(hidden, dim=-1)
    if base.kind == "sd":
        return PromptEmbeddings(states)
    time_ids = torch.tensor(
        [[resolution, resolution, 0, 0, resolution, resolution]], dtype=states.dtype
    ).repeat(len(prompts), 1)
    return PromptEmbeddings(states, {"text_embeds": pooled, "time_ids": time_ids.to(device)})
