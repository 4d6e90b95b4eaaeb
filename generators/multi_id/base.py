"""A trained pixel-space base for the multi-identity generator: the default IDiff-Face UNet
taught to draw group canvases.

No pretrained SD/FLUX weights exist here, so the base is our own: the trained default
IDiff-Face model (``models/idiff-face-lfw``, 32 px faces of LFW DevTrain people) is turned
into a plain ``UNet2DConditionModel`` that the multi-identity code loads like any SD UNet,
then fine-tuned (all weights, diffusion loss only) on 64 px group canvases of 2-4 pasted
DevTrain faces (``group_data.GroupCanvasSet``). Identity comes later, from the adapter.

``base_unet_from_idiff_face``: the conversion. IDiff-Face adds its identity context to the
timestep embedding through ``class_embedding``; for "no identity" that context is the
learned empty context, i.e. a constant vector added to the time embedding, which is
folded exactly into the bias of ``time_embedding.linear_2`` (so the result needs no
``class_labels``, as the multi-identity sampler passes none). The cross-attention keeps
its weights; it receives the multi-identity code's null prompt (one zero token) from now on,
which the canvas fine-tune adapts to.

``fit_base``: the canvas fine-tune, resumable exactly like ``fit.fit_adapter`` (per-step
seeded noise and canvases, optimizer moments in the checkpoint). ``out_dir/base`` is a
pipeline-style folder (``unet/`` + ``scheduler/``) that ``fit.init_model_folder`` takes.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from facefoundry import checkpoints
from facefoundry.atomic import write_json_atomic
from facefoundry.generators.multi_id.group_data import GroupCanvasSet
from facefoundry.generators.multi_id.train import null_prompt
from facefoundry.generators.seeds import sample_seed
from facefoundry.generators.training_data import FaceTrainingSet

logger = logging.getLogger(__name__)

BASE_NAME = "base"
CHECKPOINT_NAME = "checkpoint"
HISTORY_NAME = "history.json"


def base_unet_from_idiff_face(folder: str | Path, canvas: int = 64):
    """The IDiff-Face UNet of ``folder`` with its empty-identity context folded into the
    time embedding, as a class-free ``UNet2DConditionModel`` of ``sample_size`` canvas."""
    from diffusers import UNet2DConditionModel

    from facefoundry.generators.idiff_face.model import IDiffFaceModel

    model = IDiffFaceModel.from_pretrained(folder)
    unet = model.unet
    config = dict(unet.config)
    config.update(
        sample_size=canvas, class_embed_type=None, projection_class_embeddings_input_dim=None
    )
    base = UNet2DConditionModel.from_config(config)
    state = {k: v for k, v in unet.state_dict().items() if not k.startswith("class_embedding.")}
    base.load_state_dict(state, strict=True)
    if unet.class_embedding is not None:
        with torch.no_grad():
            empty = model.conditioner.empty_context.flatten()[None]
            base.time_embedding.linear_2.bias += unet.class_embedding(empty)[0]
    return base.eval()


def adapter_from_idiff_face(adapter, unet, folder: str | Path) -> None:
    """Start the identity adapter from the identity path the base already learned.

    The base is IDiff-Face's UNet, whose cross-attention layers were trained to read
    identity context tokens ``to_context(embedding)``. The adapter's tokenizer (which must
    be linear: ``hidden=0``) gets that projection, and each identity processor the key,
    value and output weights of its layer (output bias zero: the layer's own text term,
    which sees the null prompt, already adds it). Inside a box the layer then computes
    exactly IDiff-Face's identity cross-attention for that box's identity; training goes
    on from there instead of from a zero output.
    """
    from facefoundry.generators.idiff_face.model import IDiffFaceModel

    model = IDiffFaceModel.from_pretrained(folder)
    config, tokenizer = model.config, adapter.tokenizer
    expected = (0, config.id_dim, config.context_tokens, config.context_dim)
    found = (tokenizer.hidden, tokenizer.id_dim, tokenizer.num_tokens, tokenizer.token_dim)
    if found != expected:
        raise ValueError(
            f"the adapter's tokenizer (hidden, id_dim, tokens, token_dim) = {found} cannot "
            f"take IDiff-Face's identity path {expected}: init with --tokens "
            f"{config.context_tokens} --id-dim {config.id_dim} and a linear tokenizer"
        )
    with torch.no_grad():
        tokenizer.mlp[0].weight.copy_(model.conditioner.to_context.weight)
        tokenizer.mlp[0].bias.copy_(model.conditioner.to_context.bias)
        for name in adapter.layer_names:
            attn, processor = unet.get_submodule(name), adapter.processor(name)
            processor.to_k_id.weight.copy_(attn.to_k.weight)
            processor.to_v_id.weight.copy_(attn.to_v.weight)
            processor.to_out_id.weight.copy_(attn.to_out[0].weight)
            processor.to_out_id.bias.zero_()


def idiff_face_schedule(folder: str | Path):
    """The DDPM training schedule of an IDiff-Face model folder (betas, prediction type)."""
    from diffusers import DDPMScheduler

    from facefoundry.generators.idiff_face.model import read_config

    config = read_config(folder)
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        beta_start=config.beta_start,
        beta_end=config.beta_end,
        prediction_type=config.prediction_type,
    )


def write_base_folder(folder: str | Path, unet, scheduler) -> Path:
    """``folder/unet`` + ``folder/scheduler``: what ``init_model_folder(unet=folder)`` reads."""
    folder = Path(folder)
    with checkpoints.atomic_folder(folder) as tmp:
        unet.save_pretrained(tmp / "unet")
        scheduler.save_pretrained(tmp / "scheduler")
    return folder


def diffusion_loss(unet, scheduler, images: torch.Tensor, generator: torch.Generator):
    """MSE of the UNet's prediction (epsilon or v) on noised ``images``, null prompt."""
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (len(images),), generator=generator)
    noisy = scheduler.add_noise(images, noise, t)
    prompt = null_prompt(unet, len(images), images.device, images.dtype)
    output = unet(noisy, t, encoder_hidden_states=prompt).sample
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(images, noise, t)
    else:
        target = noise
    return F.mse_loss(output.float(), target.float())


def fit_base(
    idiff_face_folder: str | Path,
    data: FaceTrainingSet | str | Path,
    out_dir: str | Path,
    steps: int,
    batch_size: int = 16,
    learning_rate: float = 1e-4,
    face_counts: tuple[int, ...] = (2, 3, 4),
    box_min: float = 0.35,
    box_max: float = 0.45,
    box_margin: float = 0.02,
    canvas: int = 64,
    seed: int = 0,
    checkpoint_every: int = 100,
    progress: bool = True,
) -> Path:
    """Fine-tune the converted IDiff-Face UNet on group canvases for ``steps`` steps in
    total (resuming from ``out_dir``); returns ``out_dir/base``. Step ``s`` draws
    ``face_counts[s % len(face_counts)]`` faces per canvas."""
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not isinstance(data, FaceTrainingSet):
        data = FaceTrainingSet.load(data)
    unet = base_unet_from_idiff_face(idiff_face_folder, canvas).train()
    scheduler = idiff_face_schedule(idiff_face_folder)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=learning_rate, weight_decay=0.0)
    sets = [
        GroupCanvasSet(data, k, canvas, box_min, box_max, box_margin, "noise", seed)
        for k in face_counts
    ]
    step, history = 0, []
    checkpoint = checkpoints.load_checkpoint(out_dir / CHECKPOINT_NAME)
    if checkpoint is not None:
        checkpoint.restore(optimizer, unet=unet)
        step, history = int(checkpoint.state["step"]), list(checkpoint.state["history"])
        logger.info("resuming %s at step %d", out_dir, step)
    meta = {
        "source": str(idiff_face_folder),
        "seed": seed,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "face_counts": list(face_counts),
        "boxes": [box_min, box_max, box_margin],
        "canvas": canvas,
    }

    def save() -> None:
        checkpoints.save_checkpoint(
            out_dir / CHECKPOINT_NAME, {"unet": unet}, optimizer, {"step": step,
            "history": history, **meta},
        )  # fmt: skip
        write_base_folder(out_dir / BASE_NAME, unet, scheduler)
        (out_dir / BASE_NAME / "fit_step.json").write_text(json.dumps({"step": step, **meta}))
        write_json_atomic(out_dir / HISTORY_NAME, history, indent=None)

    bar = tqdm(total=steps, initial=step, desc="multi-id base", unit="step", disable=not progress)
    saved = step
    while step < steps:
        images = sets[step % len(sets)].batch(step, batch_size).images
        generator = torch.Generator().manual_seed(sample_seed(seed, step, 0, "base"))
        loss = diffusion_loss(unet, scheduler, images, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        history.append({"step": step, "diffusion": round(loss.item(), 6)})
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % checkpoint_every == 0 or step == steps:
            save()
            saved = step
    bar.close()
    if saved != step or not (out_dir / BASE_NAME).is_dir():
        save()
    return out_dir / BASE_NAME


__all__ = [
    "adapter_from_idiff_face",
    "base_unet_from_idiff_face",
    "diffusion_loss",
    "fit_base",
    "idiff_face_schedule",
    "write_base_folder",
]
