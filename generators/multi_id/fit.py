"""Train the multi-identity adapter from a face training set, resumably.

``init_model_folder`` starts a model folder (base UNet + fresh zero-output adapter +
DDPM schedule, optional VAE); ``fit_adapter`` trains its adapter on group canvases
(``group_data``) with ``training_step``. Each step's noise comes from a generator seeded
by (seed, step), and the optimizer moments are checkpointed (safetensors, never
pickles), so a resumed run continues exactly as an uninterrupted one would.

``out_dir`` holds ``model/`` (a ``save_model`` folder, also what generation loads),
``state.json`` (step, history, optimizer param groups), ``optimizer.safetensors`` and
``history.json`` (one dict of loss terms per step).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from facefoundry.generators.seeds import sample_seed
from facefoundry.generators.training_data import FaceTrainingSet
from facefoundry.generators.with_anyone.attention import install_identity_adapter
from facefoundry.generators.with_anyone.group_data import GroupCanvasSet
from facefoundry.generators.with_anyone.model import load_model, save_model
from facefoundry.generators.with_anyone.settings import MultiIdSettings
from facefoundry.generators.with_anyone.train import make_optimizer, training_step

logger = logging.getLogger(__name__)

STATE_NAME = "state.json"
OPTIMIZER_NAME = "optimizer.safetensors"
HISTORY_NAME = "history.json"
STEP_NAME = "fit_step.json"  # inside model/: which step the saved weights belong to


def tiny_unet(size: int = 32, seed: int = 0):
    """A small pixel-space UNet2DConditionModel for CPU trials (not for real data)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()


def init_model_folder(
    out: str | Path,
    unet: str | Path = "tiny",
    id_dim: int = 128,
    tokens: int = 8,
    vae: str | Path | None = None,
    prediction_type: str | None = None,
    tiny_size: int = 32,
    seed: int = 0,
) -> Path:
    """Write a model folder with a fresh adapter (zero output: the base model unchanged).

    ``unet``: "tiny", a diffusers UNet folder, or a pipeline folder holding ``unet/``
    (whose ``vae/`` and ``scheduler/`` are then used unless ``vae`` is given).
    ``prediction_type``: "epsilon" or "v_prediction"; default: the pipeline's schedule,
    else epsilon.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    schedule = None
    if str(unet) == "tiny":
        model = tiny_unet(tiny_size, seed)
        if vae is not None:
            raise ValueError("the tiny UNet is pixel-space; it takes no VAE")
    else:
        folder = Path(unet)
        if (folder / "unet" / "config.json").is_file():  # a whole pipeline
            if vae is None and (folder / "vae" / "config.json").is_file():
                vae = folder / "vae"
            if (folder / "scheduler").is_dir():
                schedule = folder / "scheduler"
            folder = folder / "unet"
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{folder} is not a diffusers UNet folder (no config.json)")
        model = UNet2DConditionModel.from_pretrained(folder).eval()
    autoencoder = AutoencoderKL.from_pretrained(vae).eval() if vae is not None else None
    expected = autoencoder.config.latent_channels if autoencoder is not None else 3
    if model.config.in_channels != expected:
        raise ValueError(
            f"the UNet takes {model.config.in_channels} channels but "
            + (f"the VAE makes {expected}" if autoencoder else "pixel images have 3 (give --vae)")
        )
    torch.manual_seed(seed + 1)
    adapter = install_identity_adapter(model, id_dim, num_tokens=tokens)
    if schedule is not None:
        overrides = {"prediction_type": prediction_type} if prediction_type else {}
        scheduler = DDPMScheduler.from_pretrained(schedule, **overrides)
    else:
        scheduler = DDPMScheduler(
            num_train_timesteps=1000, prediction_type=prediction_type or "epsilon"
        )
    return save_model(out, model, adapter, scheduler, autoencoder)


def _device(settings: MultiIdSettings) -> str:
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def canvas_size(unet, vae=None) -> int:
    """Pixel size of the training images: the UNet's sample size (times the VAE factor)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    return int(unet.config.sample_size) * factor


def _save_optimizer(optimizer: torch.optim.Optimizer, path: Path, step: int) -> list[dict]:
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": torch.as_tensor(value).detach().cpu().contiguous()
        for index, entry in state["state"].items()
        for name, value in entry.items()
    }
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata={"step": str(step)})
    partial.replace(path)
    return state["param_groups"]


def _load_optimizer(optimizer: torch.optim.Optimizer, path: Path, param_groups: list) -> None:
    state: dict[int, dict] = {}
    for key, value in load_file(str(path)).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})


def _write_json(path: Path, value) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value))
    partial.replace(path)


def _checkpoint(out_dir, unet, adapter, scheduler, vae, optimizer, step, history, meta) -> None:
    """model/ (atomic: partial folder, then rename), optimizer, history, then state.json
    last: state.json is the commit marker, and the step recorded in each part is checked
    on resume."""
    final, partial, old = (out_dir / n for n in ("model", "model.partial", "model.old"))
    shutil.rmtree(partial, ignore_errors=True)
    save_model(partial, unet, adapter, scheduler, vae)
    (partial / STEP_NAME).write_text(json.dumps({"step": step}))
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    partial.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    groups = _save_optimizer(optimizer, out_dir / OPTIMIZER_NAME, step)
    _write_json(out_dir / HISTORY_NAME, history)
    _write_json(
        out_dir / STATE_NAME,
        {"step": step, "history": history, "param_groups": groups, **meta},
    )


def _resumable(out_dir: Path) -> dict | None:
    """The saved state when out_dir holds a consistent checkpoint, else None."""
    state_path, model = out_dir / STATE_NAME, out_dir / "model"
    if not (state_path.is_file() and (model / STEP_NAME).is_file()):
        return None
    if not (out_dir / OPTIMIZER_NAME).is_file():
        return None
    state = json.loads(state_path.read_text())
    model_step = json.loads((model / STEP_NAME).read_text())["step"]
    if model_step != state["step"]:
        raise RuntimeError(
            f"{out_dir}: model/ is at step {model_step} but state.json at {state['step']} "
            "(interrupted while saving); delete the folder or restore one of them"
        )
    return state


def fit_adapter(
    model_folder: str | Path,
    data: FaceTrainingSet | str | Path,
    out_dir: str | Path,
    id_network: nn.Module,
    steps: int,
    batch_size: int,
    settings: MultiIdSettings,
    seed: int = 0,
    checkpoint_every: int = 100,
    progress: bool = True,
    negatives: torch.Tensor | None = None,
    background: str = "noise",
) -> Path:
    """Train the adapter of ``model_folder`` for ``steps`` steps in total; returns
    ``out_dir/model``. Resumes from ``out_dir`` when it holds a checkpoint (the model
    folder is then read from there). ``id_network`` maps 112 px crops in [-1, 1] to
    embeddings; with ``id_loss_weight`` and ``infonce_weight`` both 0 it is unused.
    """
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(data, FaceTrainingSet):
        data = FaceTrainingSet.load(data)
    device = _device(settings)
    state = _resumable(out_dir)
    source = out_dir / "model" if state else Path(model_folder)
    unet, adapter, scheduler, vae = load_model(source, device, getattr(torch, settings.dtype))
    if data.embeddings.shape[1] != adapter.tokenizer.id_dim:
        raise ValueError(
            f"the training set has {data.embeddings.shape[1]}-d embeddings but the adapter "
            f"takes {adapter.tokenizer.id_dim}-d ones (init the model with that --id-dim)"
        )
    if vae is not None:
        vae.requires_grad_(False)
    id_network = id_network.to(device).eval()
    canvases = GroupCanvasSet(
        data,
        settings.faces_per_image,
        canvas_size(unet, vae),
        settings.box_min,
        settings.box_max,
        settings.box_margin,
        background,  # type: ignore[arg-type]
        seed,
    )
    optimizer = make_optimizer(adapter, settings.learning_rate)
    step, history = 0, []
    if state:
        _load_optimizer(optimizer, out_dir / OPTIMIZER_NAME, state["param_groups"])
        step, history = int(state["step"]), list(state["history"])
        logger.info("resuming %s at step %d", out_dir, step)
    meta = {"seed": seed, "batch_size": batch_size, "settings": settings.model_dump(mode="json")}
    if negatives is not None:
        negatives = negatives.to(device)
    bar = tqdm(
        total=steps, initial=step, desc="multi-id adapter", unit="step", disable=not progress
    )
    saved = step
    while step < steps:
        batch = canvases.batch(step, batch_size)
        batch.images = batch.images.to(device, unet.dtype)
        batch.identities, batch.boxes = batch.identities.to(device), batch.boxes.to(device)
        generator = torch.Generator(device=device).manual_seed(sample_seed(seed, step, 0, "fit"))
        losses = training_step(
            unet, adapter, scheduler, batch, id_network, optimizer, settings,
            vae=vae, negatives=negatives, generator=generator,
        )  # fmt: skip
        step += 1
        history.append({"step": step, **losses})
        bar.update(1)
        bar.set_postfix(loss=f"{losses['loss']:.4f}")
        if step % checkpoint_every == 0 or step == steps:
            _checkpoint(out_dir, unet, adapter, scheduler, vae, optimizer, step, history, meta)
            saved = step
    bar.close()
    if saved != step or not (out_dir / "model").is_dir():  # steps already reached on resume
        _checkpoint(out_dir, unet, adapter, scheduler, vae, optimizer, step, history, meta)
    return out_dir / "model"


__all__ = ["canvas_size", "fit_adapter", "init_model_folder", "tiny_unet"]
