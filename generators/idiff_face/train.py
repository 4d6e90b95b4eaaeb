"""Training IDiff-Face: denoising loss on aligned faces conditioned by their embeddings.

Resumable by construction: each step's batch, timesteps, noise and dropout masks are
drawn from generators seeded by (seed, step, process), so a run resumed from a
checkpoint takes exactly the step it would have taken. Checkpoints are safetensors
(weights, EMA weights, optimizer moments) plus JSON (step, loss history), written to a
temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from facefoundry import checkpoints
from facefoundry.errors import UsageError
from facefoundry.generators.denoise import predicted_x0
from facefoundry.generators.identities import PRIOR_FILE, save_identity_prior
from facefoundry.generators.idiff_face import identity_loss as id_loss
from facefoundry.generators.idiff_face.config import IDiffFaceConfig
from facefoundry.generators.idiff_face.grow import (
    grow_attention,
    grow_depth,
    grow_modulation,
    grow_width,
)
from facefoundry.generators.idiff_face.model import IDiffFaceModel
from facefoundry.generators.idiff_face.schedule import min_snr_weights, training_scheduler
from facefoundry.generators.seeds import sample_seed
from facefoundry.generators.training_data import FaceTrainingSet

logger = logging.getLogger(__name__)
ANCHOR_GRID = 8  # drawn_anchor_weight's low-pass: an 8 x 8 average pool of the face


def layout_mse(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE of the two images' ANCHOR_GRID x ANCHOR_GRID average pools: blind to detail
    finer than a pool cell, so it holds pose, lighting and framing, not identity detail."""
    return F.mse_loss(
        F.adaptive_avg_pool2d(predicted.float(), ANCHOR_GRID),
        F.adaptive_avg_pool2d(target.float(), ANCHOR_GRID),
    )


class TrainSettings(BaseModel):
    """Optimisation settings; the defaults are the measured fast-converging CPU recipe."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(20000, ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    lr_schedule: str = Field("cosine", pattern="^(cosine|constant)$")
    min_lr_ratio: float = 0.05
    weight_decay: float = 1e-2
    ema_max_decay: float = 0.999
    min_snr_gamma: float | None = 5.0
    p_uncond: float = Field(0.1, ge=0.0, le=1.0, description="rows trained with empty context")
    hflip: bool = True
    seed: int = 0
    checkpoint_every: int = 250
    log_every: int = 25
    mixed_precision: str = Field("auto", pattern="^(auto|no|bf16|fp16)$")
    threads: int | None = None
    # identity term (issue 16; identity_loss.py): identity_weight * mean_b w(t) *
    # (1 - cos(SFace(predicted x0), condition)), w(t) = (1 - t / (identity_max_t * T))**2
    # for t <= identity_max_t * T and 0 above (ID-Booth's (1 - t/T)^2 weighting, limited
    # to t <= 0.6 T as in WithAnyone). 0 (the default) leaves training unchanged.
    identity_weight: float = Field(0.0, ge=0.0)
    # contrast term (identity_loss.identity_terms): InfoNCE of SFace(predicted x0) against
    # its own condition vs every other training person's centroid, logits = scale x cos,
    # same w(t) and rows. It pays for what tells identities apart (de-duplication
    # removes conditions that draw the same face), not for the shared average face.
    identity_contrast_weight: float = Field(0.0, ge=0.0)
    identity_contrast_scale: float = Field(16.0, gt=0.0)
    identity_max_t: float = Field(0.6, gt=0.0, le=1.0, description="fraction of T")
    # where both terms compare embeddings: "raw" SFace cosines, or "whitened" by the
    # training people's covariance (identity_loss.whitening: every axis counts alike, so
    # following only the few dominant axes no longer scores well)
    identity_space: str = Field("raw", pattern="^(raw|whitened)$")
    # the recognizer's forward + backward dominates a CPU step (3.9 s vs 0.8 s at batch
    # 32): at most this many weighted rows (the first in the random batch order) go
    # through it, the term rescaled by active / used so its expectation is unchanged
    identity_max_rows: int | None = Field(None, ge=1)
    # issue 16, lever 5: LFW DevTrain is dominated by a few people (George W Bush: 530 of
    # 9,525 images), so per-image batches pull the model toward a few faces. "person" draws
    # a person uniformly, then one of their images.
    batch_sampling: str = Field("image", pattern="^(image|person)$")
    # issue 16, lever 5: which embedding conditions a training row. "image" (IDiff-Face):
    # the row's own, which also carries this photo's pose, lighting and expression.
    # "other": another photo of the same person where there is one (people with a single
    # photo keep their own), so the condition can only tell the model what the person's
    # photos share: the identity.
    condition_source: str = Field("image", pattern="^(image|other)$")
    # drawn-identity rows (drawn_pool.py): this many rows per step are faces the starting
    # weights drew for conditions from the fitted prior (a pool of drawn_identities),
    # noised to t <= identity_max_t * T and scored by the identity and contrast terms
    # only (same weights and identity_max_rows), the pool's other conditions among the
    # negatives. 0 = off.
    drawn_rows: int = Field(0, ge=0)
    drawn_identities: int = Field(1500, ge=2)
    # scales both drawn terms (1 = the real rows' weights; at 1 they collapse pose
    # variety: BENCHMARKS session 26)
    drawn_weight: float = Field(1.0, ge=0.0)
    # keeps the drawn faces' layout: drawn_anchor_weight x MSE between the 8 x 8 average
    # pools of the predicted x0 and of the drawn face (pose, lighting and framing live at
    # that scale; identity detail is finer, so the identity terms can still move it)
    drawn_anchor_weight: float = Field(0.0, ge=0.0)


class Ema:
    """Exponential moving average of weights with warm-up:
    decay = min(max_decay, (1 + step) / (10 + step)), so early weights fade fast."""

    def __init__(self, model: torch.nn.Module, max_decay: float):
        self.max_decay = max_decay
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        decay = min(self.max_decay, (1 + step) / (10 + step))
        for key, value in model.state_dict().items():
            if value.dtype.is_floating_point:
                self.shadow[key].mul_(decay).add_(value.detach().float(), alpha=1 - decay)
            else:
                self.shadow[key].copy_(value)

    def copy_to(self, model: torch.nn.Module) -> None:
        model.load_state_dict(
            {k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()}
        )


class _PersonRows:
    """Rows grouped by person, for batches drawn uniformly over people."""

    def __init__(self, labels: np.ndarray):
        order = np.argsort(labels, kind="stable")
        _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        self.order = torch.from_numpy(order.astype(np.int64))
        self.starts = torch.from_numpy(starts.astype(np.int64))
        self.counts = torch.from_numpy(counts.astype(np.int64))
        # per row (original order): its person's first sorted position, photo count and
        # its own rank among them
        person = torch.repeat_interleave(torch.arange(len(counts)), self.counts)
        self.row_start = torch.empty_like(self.order)
        self.row_start[self.order] = self.starts[person]
        self.row_count = torch.empty_like(self.order)
        self.row_count[self.order] = self.counts[person]
        self.row_rank = torch.empty_like(self.order)
        self.row_rank[self.order] = torch.arange(len(order)) - self.starts[person]

    def draw(self, size: int, generator: torch.Generator) -> torch.Tensor:
        person = torch.randint(0, len(self.counts), (size,), generator=generator)
        within = (torch.rand(size, generator=generator) * self.counts[person]).long()
        within = torch.minimum(within, self.counts[person] - 1)
        return self.order[self.starts[person] + within]

    def other(self, rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """For each row, a random other row of the same person (itself if they have one)."""
        count = self.row_count[rows]
        step = (torch.rand(len(rows), generator=generator) * (count - 1)).long()
        step = torch.minimum(step, (count - 2).clamp(min=0))  # u * (n - 1) rounds below n - 1
        within = (self.row_rank[rows] + 1 + step) % count  # 1 .. n - 1 ranks on: never itself
        return self.order[self.row_start[rows] + within]


# how often a run logs and checkpoints, and its thread count, change no step's result
_BOOKKEEPING = frozenset({"threads", "log_every", "checkpoint_every"})


def changed_settings(saved: dict, settings: TrainSettings) -> dict[str, tuple]:
    """Settings that differ from a checkpoint's (``saved``: its JSON), as (saved, now);
    a field the checkpoint predates counts as its default."""
    now = settings.model_dump(mode="json")
    changed = {}
    for key, value in now.items():
        if key in _BOOKKEEPING:
            continue
        before = saved.get(key, TrainSettings.model_fields[key].default)
        if before != value:
            changed[key] = (before, value)
    return changed


def _lr_lambda(settings: TrainSettings):
    def factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        if settings.lr_schedule == "constant":
            return 1.0
        progress = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return settings.min_lr_ratio + (1 - settings.min_lr_ratio) * cosine

    return factor


def budget_steps(step: int, elapsed: float, budget: float, rate: float, upper_bound: int) -> int:
    """The step count that ends a run of ``budget`` seconds, ``elapsed`` of them spent at
    ``step``, at ``rate`` steps per second; never below the next step nor above
    ``upper_bound``. A time-budgeted run (a device lease, a nightly slot) re-plans with
    this so its learning-rate schedule still decays to the end instead of being cut off."""
    planned = step + int(max(0.0, budget - elapsed) * rate)
    return max(step + 1, min(upper_bound, planned))


def person_centroids(embeddings: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Unit mean embedding of each training person: the contrast term's negatives."""
    index = torch.from_numpy(np.unique(labels, return_inverse=True)[1].astype(np.int64))
    sums = torch.zeros(int(index.max()) + 1, embeddings.shape[1]).index_add_(
        0, index, embeddings.float()
    )
    return F.normalize(sums, dim=1)


class Trainer:
    """Holds the model, EMA, optimizer and data; ``train_step`` is one seeded step."""

    def __init__(
        self,
        model: IDiffFaceModel,
        data: FaceTrainingSet,
        settings: TrainSettings,
        out_dir: str | Path,
        vae=None,
    ):
        from accelerate import Accelerator

        if settings.threads:
            torch.set_num_threads(settings.threads)
        precision = settings.mixed_precision
        if precision == "auto":
            precision = "bf16" if torch.cuda.is_available() else "no"
        self.accelerator = Accelerator(mixed_precision=precision)
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.config = model.config
        self.noise = training_scheduler(model.config)
        if data.embeddings.shape[1] != model.config.id_dim:
            raise ValueError(
                f"training set embeddings are {data.embeddings.shape[1]}-d but the model "
                f"expects {model.config.id_dim}-d (id_dim)"
            )
        self.samples = self._prepare_samples(data, vae)
        self.vae = None
        self.recognizer = None
        self.negatives = None
        self.identity_space = None
        if self.uses_recognizer:
            id_loss.check_identity_conditioning(
                model.config.conditioning_embedder, model.config.id_dim
            )
            if model.config.latent:  # the term judges pixels: decode x0 with the frozen VAE
                self.vae = vae.eval().requires_grad_(False).to(self.accelerator.device)
            self.recognizer = id_loss.load_identity_recognizer(self.accelerator.device)
        self.last_identity: float | None = None
        self.last_contrast: float | None = None
        self.embeddings = torch.from_numpy(np.ascontiguousarray(data.embeddings))
        if settings.identity_contrast_weight > 0:
            self.negatives = person_centroids(self.embeddings, np.asarray(data.labels))
        if self.uses_recognizer and settings.identity_space == "whitened":
            self.identity_space = id_loss.whitening(F.normalize(self.embeddings.float(), dim=1))
        self.person_rows = _PersonRows(np.asarray(data.labels))
        self.drawn = None
        self.last_drawn: dict[str, float] = {}
        if settings.drawn_rows:
            self.drawn = self._drawn_pool(model, data)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
        )
        self.model, self.optimizer = self.accelerator.prepare(model, self.optimizer)
        self.ema = Ema(self.accelerator.unwrap_model(self.model), settings.ema_max_decay)
        self.lr_factor = _lr_lambda(settings)
        self.step = 0
        self.history: list[dict] = []

    @property
    def uses_recognizer(self) -> bool:
        return self.settings.identity_weight > 0 or self.settings.identity_contrast_weight > 0

    def _drawn_pool(self, model: IDiffFaceModel, data: FaceTrainingSet) -> dict:
        """The drawn-identity rows' pool and negatives (``drawn_pool.py``)."""
        from facefoundry.generators.idiff_face.drawn_pool import load_or_draw_pool

        if not self.uses_recognizer:
            raise ValueError(
                "drawn_rows are scored by the identity terms only: set identity_weight or "
                "identity_contrast_weight > 0"
            )
        if self.config.latent:
            raise ValueError("drawn_rows need a pixel-space model (faces drawn at sample_size)")
        pool = load_or_draw_pool(
            self.out_dir,
            model,
            data.embeddings,
            self.settings.drawn_identities,
            self.settings.seed,
            device=self.accelerator.device,
        )
        if self.negatives is not None:  # training people and every drawn condition
            pool["negatives"] = torch.cat([self.negatives, F.normalize(pool["conditions"], dim=1)])
        return pool

    def drawn_batch(self, step: int):
        """Step ``step``'s drawn-identity rows: pool faces, their conditions, timesteps
        uniform on [0, identity_max_t * T) (the terms weigh nothing above), noise."""
        generator = torch.Generator().manual_seed(
            sample_seed(self.settings.seed, self.accelerator.process_index, step, "drawn")
        )
        rows = self.settings.drawn_rows
        index = torch.randint(0, len(self.drawn["faces"]), (rows,), generator=generator)
        cutoff = max(1, int(self.settings.identity_max_t * self.config.num_train_timesteps))
        timesteps = torch.randint(0, cutoff, (rows,), generator=generator)
        x0 = self.drawn["faces"][index]
        noise = torch.randn(x0.shape, generator=generator)
        return x0, self.drawn["conditions"][index], timesteps, noise

    def drawn_terms(self, x0, identity, timesteps, noise) -> dict:
        """``drawn_identity`` and ``drawn_contrast``: the identity terms of the model's
        prediction from re-noised drawn faces (no denoising term)."""
        noisy = self.noise.add_noise(x0, noise, timesteps)
        drop = torch.zeros(len(x0), dtype=torch.bool, device=x0.device)
        with self.accelerator.autocast():
            predicted = self.model(noisy, timesteps, identity, drop)
        terms = self.identity_terms(
            noisy, predicted, identity, timesteps, drop, negatives=self.drawn.get("negatives")
        )
        x0_predicted = predicted_x0(
            self.noise.alphas_cumprod, noisy, predicted, timesteps, self.config.prediction_type
        )
        anchor = layout_mse(x0_predicted, x0)
        return {
            "drawn_identity": terms["identity"],
            "drawn_contrast": terms["contrast"],
            "drawn_anchor": anchor,
        }

    def _prepare_samples(self, data: FaceTrainingSet, vae) -> torch.Tensor:
        """Faces as model inputs: [-1, 1] pixels at sample_size, or VAE latents."""
        size = self.config.image_size if self.config.latent else self.config.sample_size
        faces = pixel_faces(data.faces, size)
        if not self.config.latent:
            return faces.contiguous()
        if vae is None:
            raise ValueError("a latent IDiff-Face model needs a VAE (vae/ in the model folder)")
        latents = []
        with torch.no_grad():
            for start in range(0, len(faces), 64):
                encoded = vae.encode(faces[start : start + 64])
                latent = (
                    encoded.latent_dist.mean if hasattr(encoded, "latent_dist") else encoded.latents
                )
                latents.append(latent * getattr(vae.config, "scaling_factor", 1.0))
        return torch.cat(latents).contiguous()

    def _batch(self, step: int):
        generator = torch.Generator().manual_seed(
            sample_seed(self.settings.seed, self.accelerator.process_index, step, "batch")
        )
        if self.settings.batch_sampling == "person":
            index = self.person_rows.draw(self.settings.batch_size, generator)
        else:
            index = torch.randint(
                0, len(self.samples), (self.settings.batch_size,), generator=generator
            )
        x0 = self.samples[index]
        if self.settings.hflip:
            flip = torch.rand(len(index), generator=generator) < 0.5
            x0 = torch.where(flip.view(-1, 1, 1, 1), x0.flip(-1), x0)
        identity = self.embeddings[index]
        timesteps = torch.randint(
            0, self.config.num_train_timesteps, (len(index),), generator=generator
        )
        noise = torch.randn(x0.shape, generator=generator)
        drop = torch.rand(len(index), generator=generator) < self.settings.p_uncond
        if self.settings.condition_source == "other":  # drawn last: "image" runs unchanged
            identity = self.embeddings[self.person_rows.other(index, generator)]
        return x0, identity, timesteps, noise, drop

    def loss_at(self, step: int) -> torch.Tensor:
        """The training loss of step ``step``'s batch with the current weights: the
        (weighted) denoising loss, plus ``identity_weight`` x the identity term."""
        return self.loss_terms(step)["loss"]

    def loss_terms(self, step: int) -> dict:
        """``loss`` (what is optimised), ``denoise`` and ``identity`` (None when
        ``identity_weight`` is 0) for step ``step``'s batch."""
        x0, identity, timesteps, noise, drop = self._batch(step)
        device = self.accelerator.device
        x0, identity, timesteps, noise, drop = (
            t.to(device) for t in (x0, identity, timesteps, noise, drop)
        )
        torch.manual_seed(
            sample_seed(self.settings.seed, self.accelerator.process_index, step, "dropout")
        )
        terms = self.terms(x0, identity, timesteps, noise, drop)
        if self.drawn is None:
            return terms
        drawn = self.drawn_terms(*(t.to(device) for t in self.drawn_batch(step)))
        terms["loss"] = (
            terms["loss"]
            + self.settings.drawn_weight
            * (
                self.settings.identity_weight * drawn["drawn_identity"]
                + self.settings.identity_contrast_weight * drawn["drawn_contrast"]
            )
            + self.settings.drawn_anchor_weight * drawn["drawn_anchor"]
        )
        return {**terms, **drawn}

    def terms(self, x0, identity, timesteps, noise, drop) -> dict:
        """The loss terms of one batch (device tensors): see ``loss_terms``."""
        device = self.accelerator.device
        noisy = self.noise.add_noise(x0, noise, timesteps)
        kind = self.config.prediction_type
        if kind == "epsilon":
            target = noise
        elif kind == "v_prediction":
            target = self.noise.get_velocity(x0, noise, timesteps)
        else:
            target = x0
        with self.accelerator.autocast():
            predicted = self.model(noisy, timesteps, identity, drop)
        per_sample = F.mse_loss(predicted.float(), target.float(), reduction="none").mean((1, 2, 3))
        weights = min_snr_weights(self.noise, timesteps, self.settings.min_snr_gamma).to(device)
        denoise = (per_sample * weights).mean()
        if not self.uses_recognizer:
            return {"loss": denoise, "denoise": denoise, "identity": None, "contrast": None}
        terms = self.identity_terms(noisy, predicted, identity, timesteps, drop)
        loss = denoise + self.settings.identity_weight * terms["identity"]
        if self.negatives is not None:
            loss = loss + self.settings.identity_contrast_weight * terms["contrast"]
        return {
            "loss": loss,
            "denoise": denoise,
            "identity": terms["identity"],
            "contrast": terms["contrast"] if self.negatives is not None else None,
        }

    def identity_term(self, noisy, predicted, identity, timesteps, drop) -> torch.Tensor:
        """The weighted identity term (``identity_loss``) of the x0 the output implies."""
        return self.identity_terms(noisy, predicted, identity, timesteps, drop)["identity"]

    def identity_terms(self, noisy, predicted, identity, timesteps, drop, negatives=None) -> dict:
        """The weighted identity and contrast terms (``identity_loss.identity_terms``) of
        the x0 the output implies; rows trained unconditionally (``drop``) get weight 0.
        ``negatives``: the contrast term's, when not the training people's."""
        if self.recognizer is None:
            raise ValueError(
                "the identity terms need TrainSettings.identity_weight or "
                "identity_contrast_weight > 0"
            )
        weights = id_loss.identity_weights(
            timesteps, self.config.num_train_timesteps, self.settings.identity_max_t
        ).to(timesteps.device)
        weights = torch.where(drop, torch.zeros_like(weights), weights)
        rescale = 1.0
        limit = self.settings.identity_max_rows
        active_rows = int((weights > 0).sum())
        if limit is not None and active_rows > limit:
            keep = torch.cumsum((weights > 0).long(), 0) <= limit
            weights = torch.where(keep, weights, torch.zeros_like(weights))
            rescale = active_rows / limit
        zero = predicted.new_zeros((), dtype=torch.float32)
        if not bool((weights > 0).any()):
            return {"identity": zero, "contrast": zero}
        x0 = predicted_x0(
            self.noise.alphas_cumprod, noisy, predicted, timesteps, self.config.prediction_type
        )
        options = {
            "negatives": self.negatives if negatives is None else negatives,
            "scale": self.settings.identity_contrast_scale,
            "space": self.identity_space,
        }
        if self.config.latent:
            if self.vae is None:
                raise ValueError("identity loss needs a pixel-space model or the model's VAE")
            active = weights > 0  # decode only the rows that count; same batch mean
            scale = getattr(self.vae.config, "scaling_factor", 1.0)
            images = self.vae.decode(x0[active] / scale).sample.float()
            terms = id_loss.identity_terms(
                images, identity[active], self.recognizer, weights[active], **options
            )
            rescale *= int(active.sum()) / len(x0)
        else:
            terms = id_loss.identity_terms(x0, identity, self.recognizer, weights, **options)
        return {name: value * rescale for name, value in terms.items()}

    def train_step(self) -> float:
        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings.learning_rate * self.lr_factor(self.step)
        terms = self.loss_terms(self.step)
        loss = terms["loss"]
        if terms["identity"] is not None:
            self.last_identity = float(terms["identity"].detach())
        if terms.get("contrast") is not None:
            self.last_contrast = float(terms["contrast"].detach())
        self.last_drawn = {
            name: float(terms[name].detach())
            for name in ("drawn_identity", "drawn_contrast", "drawn_anchor")
            if name in terms
        }
        self.optimizer.zero_grad(set_to_none=True)
        self.accelerator.backward(loss)
        self.accelerator.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.step += 1
        self.ema.update(self.accelerator.unwrap_model(self.model), self.step)
        return float(loss.detach())

    # --- checkpoints -------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Write checkpoint/ (training state; ``facefoundry.checkpoints``) and model/ (EMA
        weights, a sampling folder)."""
        final = checkpoints.save_checkpoint(
            self.out_dir / "checkpoint",
            {"model": self.accelerator.unwrap_model(self.model), "ema": self.ema.shadow},
            self.optimizer,
            {
                "step": self.step,
                "settings": self.settings.model_dump(mode="json"),
                "config": self.config.model_dump(mode="json"),
                "history": self.history,
            },
        )
        self.export(self.out_dir / "model")
        return final

    def load_checkpoint(self, folder: str | Path | None = None) -> bool:
        checkpoint = checkpoints.load_checkpoint(folder or self.out_dir / "checkpoint")
        if checkpoint is None:
            return False
        checkpoint.restore(self.optimizer, model=self.accelerator.unwrap_model(self.model))
        self.ema.shadow = {k: v.float() for k, v in checkpoint.weights["ema"].items()}
        self.step = int(checkpoint.state["step"])
        self.history = checkpoint.state.get("history", [])
        logger.info("resumed from %s at step %d", checkpoint.folder, self.step)
        changed = changed_settings(checkpoint.state.get("settings", {}), self.settings)
        if changed:
            logger.warning(
                "resuming %s at step %d with other settings than it was trained with (%s): "
                "the steps from here train differently; --restart starts over",
                checkpoint.folder,
                self.step,
                "; ".join(f"{key} {old!r} -> {new!r}" for key, (old, new) in changed.items()),
            )
        return True

    def export(self, folder: str | Path) -> Path:
        """A sampling folder with the EMA weights (what generation loads)."""
        snapshot = IDiffFaceModel(self.config)
        self.ema.copy_to(snapshot)
        snapshot.save_pretrained(folder)
        return Path(folder)

    def _replan(self, origin, started: float, max_seconds: float, upper_bound: int):
        """``budget_steps`` at the rate since ``origin`` (step, time); the first call only
        sets the origin, so start-up and warm-up time do not count toward the rate."""
        now = time.perf_counter()
        if origin is None or self.step <= origin[0]:
            return (self.step, now)
        rate = (self.step - origin[0]) / max(now - origin[1], 1e-9)
        steps = budget_steps(self.step, now - started, max_seconds, rate, upper_bound)
        if steps != self.settings.steps:
            self.settings = self.settings.model_copy(update={"steps": steps})
            self.lr_factor = _lr_lambda(self.settings)
        return origin

    def fit(
        self,
        progress: bool = True,
        max_seconds: float | None = None,
        schedule_to_budget: bool = False,
    ) -> dict:
        """Train up to ``settings.steps`` (or ``max_seconds``), checkpointing as it goes.
        ``schedule_to_budget``: every log interval after the first, ``settings.steps`` is
        re-planned (``budget_steps``, at the rate measured since that first interval) so
        the schedule ends when ``max_seconds`` does."""
        from tqdm.auto import tqdm

        started = time.perf_counter()
        upper_bound = self.settings.steps
        rate_origin: tuple[int, float] | None = None
        bar = tqdm(
            total=self.settings.steps,
            initial=self.step,
            desc="IDiff-Face",
            unit="step",
            disable=not progress,
        )
        running, running_identity, running_contrast = [], [], []
        running_drawn: dict[str, list[float]] = {}
        while self.step < self.settings.steps:
            running.append(self.train_step())
            for name, value in self.last_drawn.items():
                running_drawn.setdefault(name, []).append(value)
            if self.last_identity is not None:
                running_identity.append(self.last_identity)
            if self.last_contrast is not None:
                running_contrast.append(self.last_contrast)
            bar.update(1)
            if self.step % self.settings.log_every == 0:
                entry = {
                    "step": self.step,
                    "loss": float(np.mean(running)),
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "seconds": round(time.perf_counter() - started, 1),
                }
                if running_identity:  # the unweighted-by-identity_weight identity term
                    entry["identity"] = float(np.mean(running_identity))
                if running_contrast:
                    entry["contrast"] = float(np.mean(running_contrast))
                entry.update({name: float(np.mean(v)) for name, v in running_drawn.items()})
                self.history.append(entry)
                bar.set_postfix(loss=f"{entry['loss']:.4f}")
                running, running_identity, running_contrast = [], [], []
                running_drawn = {}
                if schedule_to_budget and max_seconds:
                    rate_origin = self._replan(rate_origin, started, max_seconds, upper_bound)
                    bar.total = self.settings.steps
            if self.step % self.settings.checkpoint_every == 0:
                self.save_checkpoint()
            if max_seconds and time.perf_counter() - started > max_seconds:
                break
        bar.close()
        self.save_checkpoint()
        return {
            "step": self.step,
            "seconds": time.perf_counter() - started,
            "last_loss": self.history[-1]["loss"] if self.history else None,
        }


def pixel_faces(faces: np.ndarray, size: int) -> torch.Tensor:
    """uint8 N x H x W x 3 faces -> [-1, 1] N x 3 x size x size, resized (bilinear,
    antialiased) as training sees them."""
    pixels = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if pixels.shape[-1] != size:
        pixels = F.interpolate(
            pixels, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return pixels


def calibration_batch(
    config: IDiffFaceConfig, data: FaceTrainingSet, rows: int = 1024, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training faces noised at uniform timesteps with their own conditions (seeded):
    what ``grow.grow_modulation`` fits the new projection on."""
    if config.latent:
        raise UsageError("growing modulation needs a pixel-space model (no VAE latents)")
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(0, len(data), (min(rows, len(data)),), generator=generator).numpy()
    faces = pixel_faces(data.faces[index], config.sample_size)
    timesteps = torch.randint(0, config.num_train_timesteps, (len(index),), generator=generator)
    noise = torch.randn(faces.shape, generator=generator)
    noisy = training_scheduler(config).add_noise(faces, noise, timesteps)
    return noisy, timesteps, torch.from_numpy(data.embeddings[index]).float()


def train_idiff_face(
    data_path: str | Path,
    out_dir: str | Path,
    config: IDiffFaceConfig | None = None,
    settings: TrainSettings | None = None,
    resume: bool = True,
    progress: bool = True,
    max_seconds: float | None = None,
    schedule_to_budget: bool = False,
    init_from: str | Path | None = None,
    grow_attention_levels: tuple[int, ...] = (),
    grow_depth_blocks: int = 0,
    grow_widths: int = 0,
    cpd_p: float | None = None,
    grow_modulated: bool = False,
) -> Path:
    """Train (or resume) on a training-set file; returns the exported model folder.

    ``init_from`` (a model folder, e.g. the committed default model) starts a new run
    from those weights when there is no checkpoint to resume: training can continue
    on another machine from what is in the repository; ``grow_attention_levels`` adds
    identity cross-attention at those levels to it first (``grow.grow_attention``), and
    ``grow_depth_blocks`` that many residual blocks per level (``grow.grow_depth``),
    then doubles every channel ``grow_widths`` times (``grow.grow_width``), then, with
    ``grow_modulated``, makes the embedding scale and shift every residual block's
    normalised features (``grow.grow_modulation``, fitted on a batch of the training
    set). ``cpd_p`` sets the Contextual Partial Dropout rate (None: the model's own); it
    changes no weight, so a trained model or a checkpoint can continue at another rate.
    """
    data = FaceTrainingSet.load(data_path)
    settings = settings or TrainSettings()
    out_dir = Path(out_dir)
    checkpoint = checkpoints.load_checkpoint(out_dir / "checkpoint") if resume else None
    initial = None
    if checkpoint is not None:
        config = IDiffFaceConfig.model_validate(checkpoint.state["config"])
    elif init_from:
        initial = IDiffFaceModel.from_pretrained(init_from)
        if grow_attention_levels:
            initial = grow_attention(initial, grow_attention_levels)
        for _ in range(grow_depth_blocks):
            initial = grow_depth(initial)
        for _ in range(grow_widths):
            initial = grow_width(initial, seed=settings.seed)
        if grow_modulated:
            initial = grow_modulation(initial, *calibration_batch(initial.config, data))
        config = initial.config
    config = config or IDiffFaceConfig()
    if cpd_p is not None and cpd_p != config.cpd_p:
        if checkpoint is not None:
            logger.warning(
                "resuming %s with Contextual Partial Dropout %s instead of %s",
                out_dir / "checkpoint",
                cpd_p,
                config.cpd_p,
            )
        config = IDiffFaceConfig.model_validate({**config.model_dump(), "cpd_p": cpd_p})
    if not config.conditioning_checksum:
        config = config.model_copy(
            update={
                "conditioning_embedder": data.embedder.get("name", config.conditioning_embedder),
                "conditioning_checksum": data.embedder.get("checksum", ""),
            }
        )
    torch.manual_seed(settings.seed)
    model = IDiffFaceModel(config)
    if initial is not None:
        model.load_state_dict(initial.state_dict())
    trainer = Trainer(model, data, settings, out_dir)
    if resume:
        trainer.load_checkpoint()
    trainer.fit(progress=progress, max_seconds=max_seconds, schedule_to_budget=schedule_to_budget)
    (out_dir / "loss_history.json").write_text(json.dumps(trainer.history))
    # the 'fitted' identity method draws from a Gaussian fit to the training embeddings
    save_identity_prior(data.embeddings, out_dir / "model" / PRIOR_FILE)
    # what the model saw: the privacy filter's default reference (generators.training_record)
    from facefoundry.generators.training_record import record_training_set

    record_training_set(data, out_dir / "model", data_path)
    return out_dir / "model"
