"""Per-identity LoRA adapters on the UNet's attention projections (peft).

One base UNet stays in memory; each identity's adapter is added, trained, saved as
safetensors and deleted, and later loaded back by name for sampling.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from facefoundry.atomic import atomic_path

CONFIG_FILE = "adapter.json"
WEIGHTS_FILE = "adapter.safetensors"


def lora_config(rank: int, alpha: float, target_modules: tuple[str, ...]):
    from peft import LoraConfig

    return LoraConfig(
        r=rank,
        lora_alpha=alpha,
        target_modules=list(target_modules),
        init_lora_weights="gaussian",  # A random, B zero: the adapter starts as a no-op
    )


def add_lora(unet, name: str, rank: int, alpha: float, target_modules: tuple[str, ...]) -> list:
    """Add and activate adapter ``name``; freeze everything else; return its parameters."""
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(rank, alpha, target_modules), adapter_name=name)
    unet.set_adapter(name)
    params = [p for n, p in unet.named_parameters() if "lora_" in n and f".{name}." in n]
    for param in params:
        param.requires_grad_(True)
    if not params:
        raise ValueError(f"no LoRA parameters matched target modules {target_modules}")
    return params


def save_lora(unet, name: str, folder: str | Path, meta: dict) -> Path:
    from peft.utils import get_peft_model_state_dict

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = get_peft_model_state_dict(unet, adapter_name=name)
    with atomic_path(folder / WEIGHTS_FILE) as partial:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(partial))
    (folder / CONFIG_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return folder / WEIGHTS_FILE


def load_lora(unet, name: str, folder: str | Path) -> None:
    """Add adapter ``name`` from a saved folder and make it the active one."""
    from peft.utils import set_peft_model_state_dict

    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"no LoRA adapter at {folder} ({WEIGHTS_FILE} missing)")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    unet.add_adapter(
        lora_config(meta["rank"], meta["alpha"], tuple(meta["target_modules"])),
        adapter_name=name,
    )
    state = load_file(str(folder / WEIGHTS_FILE))
    result = set_peft_model_state_dict(unet, state, adapter_name=name)
    unexpected = getattr(result, "unexpected_keys", [])
    if unexpected:
        raise ValueError(f"{folder}: {len(unexpected)} adapter keys do not fit this UNet")
    unet.set_adapter(name)


def drop_lora(unet, name: str) -> None:
    unet.delete_adapters(name)


def lora_parameter_count(unet) -> int:
    return sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)


@torch.no_grad()
def snapshot(unet) -> dict[str, torch.Tensor]:
    """A copy of every parameter (tests: which ones changed)."""
    return {n: p.detach().clone() for n, p in unet.named_parameters()}
