"""The base Stable Diffusion-family pipeline: checked, loaded once, components exposed.

ID-Booth fine-tunes LoRA adapters on the UNet of a pipeline the user already has on
disk (SD 1.5 / 2.1 / SDXL in diffusers layout). Nothing is downloaded: a folder that is
missing or malformed gets an error that names what is wrong.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from facefoundry.errors import UsageError

SD_COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
SDXL_EXTRA = ("text_encoder_2", "tokenizer_2")


class BasePipelineError(UsageError, FileNotFoundError):
    """A base pipeline folder that cannot be used; the message says why."""


@dataclass
class BaseComponents:
    """What fine-tuning and sampling need from the base pipeline."""

    kind: str  # "sd" or "sdxl"
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list
    tokenizers: list
    scheduler_config: dict
    folder: Path

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scale(self) -> float:
        return float(getattr(self.vae.config, "scaling_factor", 1.0))


def check_base_folder(folder: str | Path) -> str:
    """Validate a diffusers pipeline folder; returns "sd" or "sdxl" (or "pixel" for an
    IDiff-Face pixel-space model folder, see ``pixel_base``)."""
    folder = Path(folder)
    if not str(folder) or not folder.is_dir():
        raise BasePipelineError(
            f"base pipeline folder {folder} does not exist: point generate.model at a local "
            "diffusers Stable Diffusion folder (model_index.json, unet/, vae/, ...) or an "
            "IDiff-Face pixel-space model folder (idiff_face.json, unet/)"
        )
    from facefoundry.generators.id_booth.pixel_base import is_pixel_base

    if is_pixel_base(folder):
        return "pixel"
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise BasePipelineError(f"{folder} has no model_index.json: not a diffusers pipeline")
    try:
        index = json.loads(index_path.read_text())
    except json.JSONDecodeError as error:
        raise BasePipelineError(f"{index_path} is not valid JSON: {error}") from error
    kind = "sdxl" if "XL" in str(index.get("_class_name", "")) else "sd"
    needed = SD_COMPONENTS + (SDXL_EXTRA if kind == "sdxl" else ())
    missing = [name for name in needed if not (folder / name).is_dir()]
    if missing:
        raise BasePipelineError(
            f"{folder} lacks {', '.join(missing)}/ (a {kind} pipeline needs it)"
        )
    for name in ("unet", "vae") + (("text_encoder",) if kind == "sd" else SDXL_EXTRA[:1]):
        if not (folder / name / "config.json").is_file():
            raise BasePipelineError(f"{folder / name} has no config.json")
        if not any((folder / name).glob("*.safetensors")):
            raise BasePipelineError(
                f"{folder / name} has no .safetensors weights (pickled .bin files are not loaded)"
            )
    return kind


def load_base(folder: str | Path, device: str | torch.device = "cpu") -> BaseComponents:
    """Load the components (frozen, eval mode) of a checked pipeline folder (an IDiff-Face
    folder gives a ``pixel_base.PixelBase``, which has the same interface)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import (
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    folder = Path(folder)
    kind = check_base_folder(folder)
    if kind == "pixel":
        from facefoundry.generators.id_booth.pixel_base import load_pixel_base

        return load_pixel_base(folder, device)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet", use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(folder / "vae", use_safetensors=True)
    encoders = [CLIPTextModel.from_pretrained(folder / "text_encoder", use_safetensors=True)]
    tokenizers = [CLIPTokenizer.from_pretrained(folder / "tokenizer")]
    if kind == "sdxl":
        encoders.append(
            CLIPTextModelWithProjection.from_pretrained(
                folder / "text_encoder_2", use_safetensors=True
            )
        )
        tokenizers.append(CLIPTokenizer.from_pretrained(folder / "tokenizer_2"))
    scheduler_config = json.loads(
        next((folder / "scheduler").glob("*.json")).read_text()
    )  # scheduler_config.json
    for module in (unet, vae, *encoders):
        module.requires_grad_(False)
        module.eval().to(device)
    return BaseComponents(kind, unet, vae, encoders, tokenizers, scheduler_config, folder)
