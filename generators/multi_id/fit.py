"""Train the multi-identity adapter from a face training set, resumably.

``init_model_folder`` starts a model folder (base UNet + fresh zero-output adapter +
DDPM schedule, optional VAE); ``fit_adapter`` trains its adapter on group canvases
(``group_data``) with ``training_step``. Each step's noise comes from a generator seeded
by (seed, step), and the optimizer moments are checkpointed (safetensors, never
pickles), so a resumed run continues exactly as an uninterrupted one would.

``out_dir`` holds ``checkpoint/`` (``facefoundry.checkpoints``: adapter weights and
optimizer moments in ``state.safetensors``; step, history, settings and optimizer param
groups in ``state.json``: what a resume reads), ``model/`` (a ``save_model`` folder, what
generation loads, with ``fit_step.json``) and ``history.json`` (one dict of loss terms per
step). Each is replaced whole, the checkpoint first.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from torch import nn

from facefoundry import checkpoints
from facefoundry.atomic import write_json_atomic
from facefoundry.generators.multi_id.attention import install_identity_adapter
from facefoundry.generators.multi_id.group_data import GroupCanvasSet
from facefoundry.generators.multi_id.model import load_model, save_model
from facefoundry.generators.multi_id.settings import MultiIdTrainSettings
from facefoundry.generators.multi_id.train import make_optimizer, training_step
from facefoundry.generators.seeds import sample_seed
from facefoundry.generators.training_data import FaceTrainingSet

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint"
MODEL_NAME = "model"
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
    identity_from: str | Path | None = None,
) -> Path:
    """Write a model folder with a fresh adapter (zero output: the base model unchanged).

    ``unet``: "tiny", a diffusers UNet folder, or a pipeline folder holding ``unet/``
    (whose ``vae/`` and ``scheduler/`` are then used unless ``vae`` is given).
    ``prediction_type``: "epsilon" or "v_prediction"; default: the pipeline's schedule,
    else epsilon. ``identity_from``: an IDiff-Face model folder (the one the base was
    made from) whose identity path the adapter starts from (``base.adapter_from_idiff_face``;
    the tokenizer is then linear), instead of a zero output.
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
    tokenizer = None
    if identity_from is not None:
        from facefoundry.generators.multi_id.base import adapter_from_idiff_face
        from facefoundry.generators.multi_id.identity_tokens import IdentityTokenizer

        tokenizer = IdentityTokenizer(id_dim, model.config.cross_attention_dim, tokens, hidden=0)
    adapter = install_identity_adapter(model, id_dim, num_tokens=tokens, tokenizer=tokenizer)
    if identity_from is not None:
        adapter_from_idiff_face(adapter, model, identity_from)
    if schedule is not None:
        overrides = {"prediction_type": prediction_type} if prediction_type else {}
        scheduler = DDPMScheduler.from_pretrained(schedule, **overrides)
    else:
        scheduler = DDPMScheduler(
            num_train_timesteps=1000, prediction_type=prediction_type or "epsilon"
        )
    return save_model(out, model, adapter, scheduler, autoencoder)


def _device(settings: MultiIdTrainSettings) -> str:
    if settings.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return settings.device


def canvas_size(unet, vae=None) -> int:
    """Pixel size of the training images: the UNet's sample size (times the VAE factor)."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 1
    return int(unet.config.sample_size) * factor


def _checkpoint(out_dir, unet, adapter, scheduler, vae, optimizer, step, history, meta) -> None:
    """checkpoint/ (the state a resume reads), then model/ and history.json."""
    checkpoints.save_checkpoint(
        out_dir / CHECKPOINT_NAME,
        {"adapter": adapter},
        optimizer,
        {"step": step, "history": history, **meta},
    )
    with checkpoints.atomic_folder(out_dir / MODEL_NAME) as folder:
        save_model(folder, unet, adapter, scheduler, vae)
        (folder / STEP_NAME).write_text(json.dumps({"step": step}))
    write_json_atomic(out_dir / HISTORY_NAME, history, indent=None)


def _resumable(out_dir: Path) -> checkpoints.Checkpoint | None:
    """The checkpoint in out_dir, if any."""
    checkpoint = checkpoints.load_checkpoint(out_dir / CHECKPOINT_NAME)
    if checkpoint is None and (out_dir / "optimizer.safetensors").is_file():
        raise RuntimeError(
            f"{out_dir} holds a run saved by an older version (state.json + "
            "optimizer.safetensors, no checkpoint/): train into a new folder, starting "
            f"from {out_dir / MODEL_NAME}"
        )
    return checkpoint


def fit_adapter(
    model_folder: str | Path,
    data: FaceTrainingSet | str | Path,
    out_dir: str | Path,
    id_network: nn.Module,
    steps: int,
    batch_size: int,
    settings: MultiIdTrainSettings,
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
    checkpoint = _resumable(out_dir)
    # resuming: the frozen parts from the run's own model folder (the adapter is then
    # restored from the checkpoint, which may be newer)
    resumed_model = checkpoint is not None and (out_dir / MODEL_NAME).is_dir()
    source = out_dir / MODEL_NAME if resumed_model else Path(model_folder)
    unet, adapter, scheduler, vae = load_model(source, device, getattr(torch, settings.dtype))
    if data.embeddings.shape[1] != adapter.tokenizer.id_dim:
        raise ValueError(
            f"the training set has {data.embeddings.shape[1]}-d embeddings but the adapter "
            f"takes {adapter.tokenizer.id_dim}-d ones (init the model with that --id-dim)"
        )
    if vae is not None:
        vae.requires_grad_(False)
    id_network = id_network.to(device).eval()
    adapter.set_region_masks(settings.region_masks)
    counts = settings.face_counts or [settings.faces_per_image]
    canvases = [
        GroupCanvasSet(
            data,
            k,
            canvas_size(unet, vae),
            settings.box_min,
            settings.box_max,
            settings.box_margin,
            background,  # type: ignore[arg-type]
            seed,
        )
        for k in counts
    ]
    optimizer = make_optimizer(adapter, settings.learning_rate)
    step, history = 0, []
    if checkpoint is not None:
        checkpoint.restore(optimizer, adapter=adapter)
        step, history = int(checkpoint.state["step"]), list(checkpoint.state["history"])
        logger.info("resuming %s at step %d", out_dir, step)
    meta = {"seed": seed, "batch_size": batch_size, "settings": settings.model_dump(mode="json")}
    if negatives is not None:
        negatives = negatives.to(device)
    bar = tqdm(
        total=steps, initial=step, desc="multi-id adapter", unit="step", disable=not progress
    )
    saved = step
    while step < steps:
        batch = canvases[step % len(canvases)].batch(step, batch_size)
        batch.images = batch.images.to(device, unet.dtype)
        batch.identities, batch.boxes = batch.identities.to(device), batch.boxes.to(device)
        generator = torch.Generator(device=device).manual_seed(sample_seed(seed, step, 0, "fit"))
        losses = training_step(
            unet, adapter, scheduler, batch, id_network, optimizer, settings,
            vae=vae, negatives=negatives, generator=generator,
        )  # fmt: skip
        step += 1
        history.append({"step": step, "faces_per_image": int(batch.boxes.shape[1]), **losses})
        bar.update(1)
        bar.set_postfix(loss=f"{losses['loss']:.4f}")
        if step % checkpoint_every == 0 or step == steps:
            _checkpoint(out_dir, unet, adapter, scheduler, vae, optimizer, step, history, meta)
            saved = step
    bar.close()
    if saved != step or not (out_dir / MODEL_NAME).is_dir():  # steps already reached on resume
        _checkpoint(out_dir, unet, adapter, scheduler, vae, optimizer, step, history, meta)
    return out_dir / MODEL_NAME


__all__ = ["canvas_size", "fit_adapter", "init_model_folder", "tiny_unet"]
