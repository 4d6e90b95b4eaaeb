"""The model folder of the multi-identity generator: base UNet + adapter + schedule.

Layout: ``unet/`` (diffusers), ``adapter.safetensors`` (tokenizer + identity layers,
never pickles), ``scheduler/`` (the DDPM training schedule), ``multi_id.json``
(tokenizer config and whether identity attention is box-masked), optional ``vae/``
(latent models).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from facefoundry.generators.multi_id.attention import (
    IdentityAdapter,
    install_identity_adapter,
    remove_identity_adapter,
)
from facefoundry.generators.multi_id.identity_tokens import IdentityTokenizer

CONFIG_NAME = "multi_id.json"
ADAPTER_NAME = "adapter.safetensors"
SAMPLERS = ("ddpm", "ddim", "dpmsolver++", "unipc")


def save_adapter(adapter: IdentityAdapter, path: str | Path) -> Path:
    """Adapter weights (tokenizer + every identity processor) as safetensors."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}
    save_file(state, str(path), metadata={"tokenizer": json.dumps(adapter.tokenizer.config())})
    return path


def load_adapter(adapter: IdentityAdapter, path: str | Path) -> IdentityAdapter:
    """Load weights saved by ``save_adapter`` (strict: every key must match)."""
    adapter.load_state_dict(load_file(str(path)), strict=True)
    return adapter


def make_sampler(training_scheduler, name: str = "dpmsolver++"):
    """A diffusers sampler sharing the training schedule (betas, prediction type)."""
    from diffusers import (
        DDIMScheduler,
        DDPMScheduler,
        DPMSolverMultistepScheduler,
        UniPCMultistepScheduler,
    )

    config = training_scheduler.config
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config, set_alpha_to_one=False)
    if name == "dpmsolver++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++")
    if name == "unipc":
        return UniPCMultistepScheduler.from_config(config)
    raise ValueError(f"unknown scheduler {name!r}; use one of {SAMPLERS}")


def save_model(folder: str | Path, unet, adapter: IdentityAdapter, scheduler, vae=None) -> Path:
    """Write the whole generator; the UNet is saved without the adapter processors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    table = dict(unet.attn_processors)
    remove_identity_adapter(unet)
    try:
        unet.save_pretrained(folder / "unet")
    finally:
        unet.set_attn_processor(table)
    scheduler.save_pretrained(folder / "scheduler")
    if vae is not None:
        vae.save_pretrained(folder / "vae")
    save_adapter(adapter, folder / ADAPTER_NAME)
    config = {"tokenizer": adapter.tokenizer.config(), "region_masks": adapter.region_masks}
    (folder / CONFIG_NAME).write_text(json.dumps(config))
    return folder


def read_tokenizer_config(folder: str | Path) -> dict:
    """The identity tokenizer's config (``id_dim``, ``token_dim``, ``num_tokens``, ...)."""
    folder = Path(folder)
    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"{folder} is not a multi-id model folder (no {CONFIG_NAME}); make one with "
            "`facefoundry generator init-multi-id` and train it with `train-multi-id`"
        )
    return json.loads((folder / CONFIG_NAME).read_text())["tokenizer"]


def load_model(folder: str | Path, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """(unet, adapter, training scheduler, vae or None) from a folder of ``save_model``."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    folder = Path(folder)
    config = read_tokenizer_config(folder)
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(device, dtype).eval()
    tokenizer = IdentityTokenizer(
        config["id_dim"], config["token_dim"], config["num_tokens"], config.get("hidden")
    )
    adapter = install_identity_adapter(unet, config["id_dim"], tokenizer=tokenizer)
    load_adapter(adapter, folder / ADAPTER_NAME)
    # folders written before the no-mask ablation existed were all trained with masks
    adapter.set_region_masks(
        json.loads((folder / CONFIG_NAME).read_text()).get("region_masks", True)
    )
    adapter.to(device).eval()
    scheduler = DDPMScheduler.from_pretrained(folder / "scheduler")
    vae = None
    if (folder / "vae").is_dir():
        vae = AutoencoderKL.from_pretrained(folder / "vae").to(device, dtype).eval()
    return unet, adapter, scheduler, vae
