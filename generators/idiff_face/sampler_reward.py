"""Fine-tuning an IDiff-Face model on the faces its sampler draws (issue 16, lever 1).

Every identity term in ``train.py`` scores the x0 the model implies at one noise level,
weighted toward low noise, where the noisy input already holds the training photo's
identity: the levels where a drawn identity is decided get no identity gradient, and
the model's identities crowd onto ~58 SFace directions whatever that term's weight
(BENCHMARKS sessions 32-39). Here each step draws faces with a differentiable DDIM
sampler (the sampling steps and classifier-free guidance of the demo, every model call
kept in the autograd graph, or only the last ``grad_steps``: DRaFT, Clark et al. 2024;
AlignProp, Prabhudesai et al. 2023) and scores the finished faces:

- ``follow``: ``1 - cos(SFace(face), condition)``, each face after a random shift of a
  pixel or two, so a pattern that fools SFace at one alignment earns nothing (weight
  ``follow_weight``). SFace follows a condition best in a frontal, evenly lit face: this
  term is the larger part of what narrows pose, and of the gain dlib also sees; without
  it the separation's gain is read mostly by SFace (BENCHMARKS session 42);
- ``separation``: each identity's 2-face SFace centroid against a bank (MoCo-style,
  detached) of the last ``bank`` identities drawn, ``sum relu(cos - margin)``: the
  filter merges identities whose centroids pass its threshold among ~1,000 others, a
  scale no batch of a dozen identities reaches;
- ``denoise``: the usual v-prediction loss on a batch of real training faces, so the
  model stays a face generator;
- ``layout``: MSE between the 8 x 8 average pools of each face and of the face the
  starting weights draw from the same noise and condition: lighting and framing live
  at that scale, identity detail finer. Without it an identity's faces converge on one
  pose and lighting; with it lighting and pixel variety hold but head pose, which moves
  landmarks by a pixel or two, still narrows (BENCHMARKS session 40).
- ``variety`` (off by default): the same MSE, on finer pools, of the difference
  between an identity's two faces and the starting weights' pair: how pose and
  lighting change from one noise to the next is held, what the two faces share (the
  identity) is free to move.

Conditions are drawn from the model's fitted identity prior (what datasets are drawn
from); dlib, which never enters the loss, is the judge (``bench_identity_draws.py``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from facefoundry import checkpoints
from facefoundry.errors import UsageError
from facefoundry.generators.identities import PRIOR_FILE, draw_fitted, load_identity_prior
from facefoundry.generators.idiff_face.identity_loss import embed_predicted
from facefoundry.generators.idiff_face.model import IDiffFaceModel
from facefoundry.generators.idiff_face.schedule import training_scheduler
from facefoundry.recognition.sface_torch import load_sface_torch, normalise

logger = logging.getLogger(__name__)

HISTORY_FILE = "loss_history_sampler_reward.json"


class RewardTuneError(UsageError, ValueError):
    """A training set or a run folder this fine-tune cannot use as asked."""


class RewardSettings(BaseModel):
    """What a sampler-reward fine-tune optimises and for how long."""

    model_config = ConfigDict(extra="forbid")

    iterations: int = Field(400, ge=1)
    identities: int = Field(12, ge=2, description="identities per step, 2 faces each")
    steps: int = Field(8, ge=1, description="DDIM sampling steps")
    grad_steps: int | None = Field(
        None, ge=1, description="differentiate only the last K sampling steps (None: all)"
    )
    guidance_scale: float = Field(3.0, ge=1.0)
    learning_rate: float = Field(2e-5, gt=0.0)
    follow_weight: float = Field(
        1.0, ge=0.0, description="0: faces are not scored on following their condition"
    )
    separation_weight: float = Field(1.0, ge=0.0)
    margin_below_threshold: float = Field(
        0.05, description="separation starts this far below the filter's merge cosine"
    )
    bank: int = Field(1024, ge=1, description="recent identity centroids to stay apart from")
    denoise_weight: float = Field(1.0, ge=0.0)
    denoise_batch: int = Field(32, ge=1)
    layout_weight: float = Field(8.0, ge=0.0, description="0: no layout anchor")
    variety_weight: float = Field(0.0, ge=0.0, description="0: no variety anchor")
    variety_grid: int = Field(16, ge=1, description="pools per side of the variety anchor")
    shift_pixels: int = Field(2, ge=0)
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)

    @field_validator("grad_steps")
    @classmethod
    def _within_the_sampler(cls, value: int | None, info: ValidationInfo) -> int | None:
        steps = info.data.get("steps")
        if value is not None and steps is not None and value > steps:
            raise ValueError(f"at most the {steps} sampling steps, got {value}")
        return value


def dedup_cosine(checksum: str | None = None) -> float:
    """The SFace cosine at which the filter merges identities (its default ``tau_inter``,
    an FMR, through the same calibration lookup the filter uses)."""
    from facefoundry.filters.calibrate import resolve_threshold
    from facefoundry.filters.settings import FilterSettings

    return resolve_threshold(FilterSettings().tau_inter, "sface", checksum or None).cos


def ddim_sample(
    model: IDiffFaceModel,
    alphas_cumprod: torch.Tensor,
    condition: torch.Tensor,
    noise: torch.Tensor,
    steps: int,
    guidance_scale: float,
    grad_steps: int | None = None,
) -> torch.Tensor:
    """Deterministic DDIM (eta 0) with classifier-free guidance, differentiable through
    its model calls: diffusers' ``DDIMScheduler`` with trailing timesteps and the last
    step to x0 (``set_alpha_to_one``), step for step. Follows the prediction type.
    ``grad_steps`` K: only the last K model calls enter the graph (DRaFT-K, Clark et al.
    2024); the earlier ones run without it, so the reward's gradient reaches only the
    low-noise calls. Same values either way. Measured (BENCHMARKS session 43): K = 3 keeps
    as many identities as the full graph and narrows pose as much, since the weights it
    moves also draw the layout."""
    total = len(alphas_cumprod)
    times = (np.round(np.arange(total, 0, -total / steps)) - 1).astype(int)
    stride = total // steps
    outside_graph = len(times) - grad_steps if grad_steps is not None else 0
    x = noise
    for index, t in enumerate(times):
        with torch.set_grad_enabled(torch.is_grad_enabled() and index >= outside_graph):
            x = _ddim_step(model, alphas_cumprod, condition, x, int(t), stride, guidance_scale)
    return x


def _ddim_step(
    model: IDiffFaceModel,
    alphas_cumprod: torch.Tensor,
    condition: torch.Tensor,
    x: torch.Tensor,
    t: int,
    stride: int,
    guidance_scale: float,
) -> torch.Tensor:
    """One guided DDIM step from timestep ``t`` to ``t - stride`` (to x0 at the last)."""
    kind = model.config.prediction_type
    rows = len(x)
    drop = torch.cat([torch.zeros(rows, dtype=torch.bool), torch.ones(rows, dtype=torch.bool)])
    a = alphas_cumprod[t]
    a_prev = alphas_cumprod[t - stride] if t >= stride else a.new_ones(())
    step = torch.full((2 * rows,), t, dtype=torch.long)
    both = model(torch.cat([x, x]), step, torch.cat([condition, condition]), drop)
    cond, uncond = both.chunk(2)
    out = uncond + guidance_scale * (cond - uncond)
    if kind == "v_prediction":
        x0 = a.sqrt() * x - (1 - a).sqrt() * out
        eps = (1 - a).sqrt() * x + a.sqrt() * out
    elif kind == "epsilon":
        eps = out
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
    else:
        x0 = out
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def shifted(images: torch.Tensor, generator: torch.Generator, pixels: int) -> torch.Tensor:
    """The batch moved by one random integer offset (reflect-padded)."""
    if pixels == 0:
        return images
    dx, dy = (int(v) for v in torch.randint(-pixels, pixels + 1, (2,), generator=generator))
    size = images.shape[-1]
    padded = F.pad(images, (pixels,) * 4, mode="reflect")
    return padded[..., pixels + dy : pixels + dy + size, pixels + dx : pixels + dx + size]


def identity_reward_terms(
    faces: torch.Tensor,
    condition: torch.Tensor,
    recognizer: torch.nn.Module,
    bank: torch.Tensor,
    threshold: float,
    margin: float,
    generator: torch.Generator,
    shift_pixels: int = 2,
) -> dict[str, torch.Tensor]:
    """``follow`` and ``separation`` (module docstring; from ``threshold - margin``) of
    faces drawn two per identity (rows 2i and 2i + 1 share a condition), plus the
    identities' centroids (for the bank) and ``neighbours``: bank entries past
    ``threshold`` (the filter's merge cosine) per identity."""
    if len(faces) % 2 or len(faces) != len(condition):
        raise ValueError("faces come two per identity, one condition row per face")
    embedded = embed_predicted(shifted(faces.clamp(-1, 1), generator, shift_pixels), recognizer)
    follow = (1 - (embedded * condition).sum(1)).mean()
    centroids = normalise(embedded.view(len(faces) // 2, 2, -1).mean(1))
    similarity = centroids @ bank.T
    return {
        "follow": follow,
        "separation": F.relu(similarity - (threshold - margin)).sum(1).mean(),
        "centroids": centroids.detach(),
        "neighbours": (similarity.detach() > threshold).float().sum(1).mean(),
    }


def layout_term(faces: torch.Tensor, anchor: torch.Tensor, grid: int = 8) -> torch.Tensor:
    """MSE of the ``grid`` x ``grid`` average pools of ``faces`` and ``anchor``."""
    pool = max(1, faces.shape[-1] // grid)
    return F.mse_loss(F.avg_pool2d(faces, pool), F.avg_pool2d(anchor, pool))


def pair_differences(faces: torch.Tensor) -> torch.Tensor:
    """Each identity's second face minus its first (faces come in identity pairs)."""
    return faces.view(len(faces) // 2, 2, *faces.shape[1:]).diff(dim=1).squeeze(1)


def variety_term(faces: torch.Tensor, anchor: torch.Tensor, grid: int = 16) -> torch.Tensor:
    """The layout term on what differs between an identity's two faces: how the pose
    and lighting change from one noise to the other must stay the starting weights',
    while what the two faces share (the identity) is free to move."""
    return layout_term(pair_differences(faces), pair_differences(anchor), grid)


def pair_spread(faces: torch.Tensor) -> float:
    """Mean squared pixel difference between each identity's two faces: a variety
    monitor no recognizer scores (the fine-tune's over the starting weights' ~1 while
    an identity's faces still differ as much)."""
    return float(faces.view(len(faces) // 2, 2, -1).diff(dim=1).square().mean())


def draw_conditions(prior: dict, count: int, rng: np.random.Generator) -> torch.Tensor:
    """Unit vectors from a fitted identity prior (``identities.draw_fitted``)."""
    return normalise(torch.from_numpy(draw_fitted(prior, rng, count).astype(np.float32)))


class SamplerRewardTuner:
    """One fine-tune: the model, a frozen copy of its starting weights (the layout
    anchor), SFace, the real faces for the denoising term and the identity bank."""

    def __init__(self, init_from: str | Path, data_path: str | Path, settings: RewardSettings):
        from facefoundry.generators.idiff_face.train import pixel_faces
        from facefoundry.generators.training_data import FaceTrainingSet

        self.settings = settings
        self.init_from = Path(init_from)
        self.model = IDiffFaceModel.from_pretrained(self.init_from).eval()  # no CPD
        self.model.requires_grad_(True)
        self.start = None
        if settings.layout_weight > 0 or settings.variety_weight > 0:
            self.start = IDiffFaceModel.from_pretrained(self.init_from).eval()
            self.start.requires_grad_(False)
        self.recognizer = load_sface_torch().eval().requires_grad_(False)
        self.threshold = dedup_cosine(self.model.config.conditioning_checksum)
        self.prior = load_identity_prior(self.init_from / PRIOR_FILE)
        self.noise_schedule = training_scheduler(self.model.config)
        self.alphas = self.noise_schedule.alphas_cumprod.float()
        data = FaceTrainingSet.load(data_path)
        if data.embeddings.shape[1] != self.model.config.id_dim:
            raise RewardTuneError(
                f"{data_path} holds {data.embeddings.shape[1]}-d embeddings; the model is "
                f"conditioned on {self.model.config.id_dim}-d vectors"
            )
        self.faces = pixel_faces(data.faces, self.model.config.sample_size)
        self.embeddings = torch.from_numpy(np.asarray(data.embeddings, dtype=np.float32))
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=settings.learning_rate, weight_decay=0.0
        )
        self.iteration = 0
        self.history: list[dict] = []
        self.bank = torch.zeros((0, self.model.config.id_dim))

    def _draw(self, model: IDiffFaceModel, condition, noise) -> torch.Tensor:
        s = self.settings
        return ddim_sample(
            model, self.alphas, condition, noise, s.steps, s.guidance_scale, s.grad_steps
        )

    def _randomness(self, iteration: int):
        """Seeded per iteration, so a resumed run draws what an unbroken one would."""
        rng = np.random.default_rng([self.settings.seed, iteration])
        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + iteration)
        return rng, generator

    def fill_bank(self, chunk: int = 48) -> None:
        """The bank's first quarter: the starting weights' own draws."""
        size = self.model.config.sample_size
        rng, generator = self._randomness(0)
        parts = []
        with torch.no_grad():
            for _ in range(max(1, self.settings.bank // 4 // chunk)):
                condition = draw_conditions(self.prior, chunk, rng).repeat_interleave(2, 0)
                noise = torch.randn((2 * chunk, 3, size, size), generator=generator)
                faces = self._draw(self.model, condition, noise).clamp(-1, 1)
                embedded = embed_predicted(faces, self.recognizer)
                parts.append(normalise(embedded.view(chunk, 2, -1).mean(1)))
        self.bank = torch.cat(parts)[-self.settings.bank :]

    def step(self) -> dict:
        s = self.settings
        self.iteration += 1
        rng, generator = self._randomness(self.iteration)
        size = self.model.config.sample_size
        condition = draw_conditions(self.prior, s.identities, rng).repeat_interleave(2, 0)
        noise = torch.randn((2 * s.identities, 3, size, size), generator=generator)
        faces = self._draw(self.model, condition, noise)
        terms = identity_reward_terms(
            faces,
            condition,
            self.recognizer,
            self.bank,
            self.threshold,
            s.margin_below_threshold,
            generator,
            s.shift_pixels,
        )
        rows = torch.randint(0, len(self.faces), (s.denoise_batch,), generator=generator)
        x0 = self.faces[rows]
        eps = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, len(self.alphas), (len(rows),), generator=generator)
        noisy = self.noise_schedule.add_noise(x0, eps, t)
        target = self.noise_schedule.get_velocity(x0, eps, t)
        denoise = F.mse_loss(self.model(noisy, t, self.embeddings[rows]), target)
        layout = variety = faces.new_zeros(())
        spread = float("nan")
        if self.start is not None:
            with torch.no_grad():
                anchor = self._draw(self.start, condition, noise)
            layout = layout_term(faces, anchor)
            variety = variety_term(faces, anchor, s.variety_grid)
            spread = pair_spread(faces.detach()) / pair_spread(anchor)
        loss = (
            s.follow_weight * terms["follow"]
            + s.separation_weight * terms["separation"]
            + s.denoise_weight * denoise
            + s.layout_weight * layout
            + s.variety_weight * variety
        )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.bank = torch.cat([self.bank, terms["centroids"]])[-s.bank :]
        entry = {
            "iteration": self.iteration,
            "follow_cos": round(1 - terms["follow"].item(), 4),
            "separation": round(terms["separation"].item(), 5),
            "bank_neighbours_over_threshold": round(terms["neighbours"].item(), 3),
            "denoise": round(denoise.item(), 5),
            "layout": round(layout.item(), 6),
            "variety": round(variety.item(), 6),
            "pair_spread_vs_start": round(spread, 3),
        }
        self.history.append(entry)
        return entry

    def save(self, out: Path) -> None:
        checkpoints.save_checkpoint(
            out / "checkpoint",
            {"model": self.model, "bank": {"centroids": self.bank}},
            self.optimizer,
            {
                "iteration": self.iteration,
                "init_from": str(self.init_from),
                "settings": self.settings.model_dump(mode="json"),
                "history": self.history,
            },
        )
        self.export(out / "model")

    def resume(self, out: Path) -> bool:
        checkpoint = checkpoints.load_checkpoint(out / "checkpoint")
        if checkpoint is None:
            return False
        # more iterations continue a run; anything else would train differently
        # a setting a run predates trained at its default
        saved = RewardSettings().model_dump(mode="json", exclude={"iterations"})
        saved.update(checkpoint.state["settings"])
        saved.pop("iterations", None)
        saved["init_from"] = checkpoint.state.get("init_from")
        now = self.settings.model_dump(mode="json", exclude={"iterations"})
        now["init_from"] = str(self.init_from)
        if saved != now:
            changed = ", ".join(
                f"{k} {saved.get(k)!r} -> {v!r}" for k, v in now.items() if saved.get(k) != v
            )
            raise RewardTuneError(
                f"{out} was fine-tuned with other settings ({changed}); use another --out "
                "or --restart"
            )
        checkpoint.restore(self.optimizer, model=self.model)
        self.bank = checkpoint.weights["bank"]["centroids"]
        self.iteration = int(checkpoint.state["iteration"])
        self.history = checkpoint.state["history"]
        return True

    def export(self, folder: Path) -> Path:
        """A sampling folder: the starting folder's identity prior, training-set record
        and loss histories with the new weights. Its model card, pictures and realisation
        map describe the old weights and stay behind (``generator fit-realisation``
        makes a map for the new ones)."""
        if not folder.exists():
            stale = shutil.ignore_patterns("*.png", "README.md", "realisation_map*")
            shutil.copytree(self.init_from, folder, ignore=stale)
        self.model.save_pretrained(folder)
        (folder / HISTORY_FILE).write_text(json.dumps(self.history))
        return folder


def reward_tune(
    init_from: str | Path,
    data_path: str | Path,
    out: str | Path,
    settings: RewardSettings,
    restart: bool = False,
    progress: bool = True,
) -> Path:
    """Fine-tune ``init_from`` on its own sampler's faces; resumable (``out/checkpoint``),
    the sampling folder in ``out/model``. Returns that folder."""
    from tqdm.auto import tqdm

    out = Path(out)
    if restart and out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    tuner = SamplerRewardTuner(init_from, data_path, settings)
    if not tuner.resume(out):
        tuner.fill_bank()
    started = time.perf_counter()
    bar = tqdm(
        total=settings.iterations,
        initial=tuner.iteration,
        desc="sampler reward",
        unit="step",
        disable=not progress,
    )
    while tuner.iteration < settings.iterations:
        entry = tuner.step()
        bar.update(1)
        bar.set_postfix(cos=entry["follow_cos"], over=entry["bank_neighbours_over_threshold"])
        if tuner.iteration % settings.checkpoint_every == 0:
            tuner.save(out)
    bar.close()
    tuner.save(out)
    logger.info(
        "sampler reward: %d steps in %.0f s", tuner.iteration, time.perf_counter() - started
    )
    return out / "model"
