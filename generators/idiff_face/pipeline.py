"""Sampling IDiff-Face: identity embeddings + per-sample seeds -> aligned face images.

Reads top to bottom like the paper: encode the identity condition -> draw the initial
noise from each sample's own seed -> denoise with any diffusers scheduler (optional
classifier-free guidance) -> decode (VAE for latent models) -> resize to 112 x 112.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from facefoundry.generators.idiff_face.model import IDiffFaceModel
from facefoundry.generators.idiff_face.schedule import make_sampler
from facefoundry.generators.seeds import fixed_batches, generators_for

logger = logging.getLogger(__name__)


class IDiffFacePipeline:
    """A trained model plus a sampler; ``__call__`` returns RGB uint8 N x S x S x 3."""

    def __init__(
        self,
        model: IDiffFaceModel,
        scheduler: str = "dpmsolver++",
        vae=None,
        device: str | torch.device | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = dtype
        self.model = model.eval().to(self.device, dtype)
        self.scheduler_name = scheduler
        self.scheduler = make_sampler(model.config, scheduler)
        self.vae = vae.eval().to(self.device, dtype) if vae is not None else None
        self.folder: Path | None = None  # set by from_pretrained: where the identity prior is
        self._axes: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        if model.config.latent and vae is None:
            raise ValueError("this IDiff-Face model works in latent space: pass its VAE")

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, scheduler: str = "dpmsolver++", **kwargs
    ) -> IDiffFacePipeline:
        folder = Path(folder)
        model = IDiffFaceModel.from_pretrained(folder)
        vae = None
        if model.config.latent:
            vae = load_vae(folder / "vae")
        pipeline = cls(model, scheduler, vae, **kwargs)
        pipeline.folder = folder
        return pipeline

    def major_axes(self, axes: int) -> tuple[np.ndarray, np.ndarray]:
        """The identity prior's mean and strongest axes (``detail_guidance``), cached."""
        if axes not in self._axes:
            if self.folder is None:
                raise ValueError(
                    "detail guidance needs the model folder's identity prior: load the "
                    "pipeline with from_pretrained or set pipeline.folder"
                )
            from facefoundry.generators.idiff_face.detail_guidance import load_major_axes

            self._axes[axes] = load_major_axes(self.folder, axes)
        return self._axes[axes]

    def optimise_for_gpu(self, channels_last: bool = True, compile_unet: bool = False) -> None:
        """Opt-in speed-ups for CUDA: channels_last memory and torch.compile of the UNet."""
        if channels_last:
            self.model.unet.to(memory_format=torch.channels_last)
        if compile_unet:
            self.compile_unet(mode="max-autotune")

    def compile_unet(self, mode: str | None = None) -> None:
        """torch.compile the UNet (inductor; on CPU it needs a C++ compiler): it fuses the
        norms, activations and attention around the convolutions, 1.3-1.5x per model call
        on 2 CPU cores (BENCHMARKS session 30). Static shapes: CPU sampling runs every call
        at ``seeds.CPU_BATCH`` samples, so each branch count compiles once, and an image's
        bytes stay the same at any batch position. They differ from eager sampling's by
        float rounding (a pixel value by 1 in ~1 of 10,000). ``eager_unet`` undoes it."""
        if not self.compiled:
            self.model.unet = torch.compile(self.model.unet, mode=mode, dynamic=False)

    @property
    def compiled(self) -> bool:
        return hasattr(self.model.unet, "_orig_mod")

    def eager_unet(self) -> None:
        """Back to the uncompiled UNet (the weights are shared, nothing is reloaded)."""
        if self.compiled:
            self.model.unet = self.model.unet._orig_mod

    @torch.no_grad()
    def __call__(
        self,
        identities: np.ndarray | torch.Tensor,
        seeds: list[int],
        steps: int = 25,
        guidance_scale: float = 1.0,
        batch_size: int = 64,
        output_size: int = 112,
        progress: bool = False,
        guidance_interval: tuple[int, int] | None = None,
        detail_guidance: float = 0.0,
        detail_axes: int = 32,
        detail_alternate: bool = False,
        shared_noise: float = 0.0,
        shared_seeds: list[int] | None = None,
    ) -> np.ndarray:
        """``guidance_interval`` (lo, hi): guidance only at timesteps lo <= t <= hi, the
        conditional output alone elsewhere (one model call instead of two; Kynkaanniemi
        et al. 2024). None = every step. ``detail_guidance`` h > 0 adds h x (cond -
        cond(twin)) at every step, the twin keeping only the identity prior's
        ``detail_axes`` strongest axes (``detail_guidance.py``). ``detail_alternate``:
        with both guidances, each step evaluates the condition and one reference, the
        unconditional branch on even steps and the twin on odd ones, reusing the other's
        last difference (two model calls per step instead of three); outside
        ``guidance_interval`` such a step is the condition alone, and the first guided step
        always evaluates the unconditional branch. ``shared_noise``
        rho > 0: each sample's initial noise is sqrt(1 - rho) x its own plus sqrt(rho) x
        one drawn from ``shared_seeds`` (one seed per identity, repeated over its
        samples), so an identity's samples share part of their coarse structure."""
        identities = torch.as_tensor(np.asarray(identities), dtype=torch.float32)
        if len(identities) != len(seeds):
            raise ValueError(f"{len(identities)} identities but {len(seeds)} seeds")
        if not 0.0 <= shared_noise < 1.0:
            raise ValueError(f"shared_noise must be in [0, 1), got {shared_noise}")
        if shared_noise and (shared_seeds is None or len(shared_seeds) != len(seeds)):
            raise ValueError("shared_noise needs one shared seed per sample")
        from facefoundry.generators.idiff_face.settings import interval_problem

        if problem := interval_problem(guidance_interval):
            raise ValueError(problem)
        detail = None
        if detail_guidance:
            detail = (float(detail_guidance), *self.major_axes(int(detail_axes)))
        if detail_alternate:
            from facefoundry.generators.idiff_face.settings import alternate_problem

            problem = alternate_problem(guidance_scale, detail_guidance)
            if problem:
                raise ValueError(problem)
        images = []
        for index, real in fixed_batches(len(seeds), batch_size, self.device):
            images.append(
                self._sample_batch(
                    identities[index],
                    [seeds[i] for i in index],
                    steps,
                    guidance_scale,
                    output_size,
                    progress,
                    guidance_interval,
                    detail,
                    detail_alternate,
                    (shared_noise, [shared_seeds[i] for i in index]) if shared_noise else None,
                )[:real]
            )
        return (
            np.concatenate(images)
            if images
            else np.zeros((0, output_size, output_size, 3), np.uint8)
        )

    def _sample_batch(
        self,
        identity,
        seeds,
        steps,
        guidance_scale,
        output_size,
        progress,
        interval=None,
        detail=None,
        alternate=False,
        shared=None,
    ):
        config = self.model.config
        shape = (config.in_channels, config.sample_size, config.sample_size)
        generators = generators_for(seeds)  # CPU generators: identical noise on any device
        latents = torch.stack([torch.randn(shape, generator=g) for g in generators])
        if shared is not None:
            rho, shared_seeds = shared
            common = torch.stack(
                [torch.randn(shape, generator=g) for g in generators_for(shared_seeds)]
            )
            latents = (1 - rho) ** 0.5 * latents + rho**0.5 * common
        latents = latents.to(self.device, self.dtype)
        identity = identity.to(self.device, self.dtype)
        use_cfg = guidance_scale != 1.0
        if use_cfg:
            identity_in = torch.cat([identity, identity])
            drop = torch.cat(
                [
                    torch.ones(len(identity), dtype=torch.bool),
                    torch.zeros(len(identity), dtype=torch.bool),
                ]
            ).to(self.device)
        else:
            identity_in, drop = identity, None
        twins = None
        if detail is not None:
            from facefoundry.generators.idiff_face.detail_guidance import major_axis_twins

            twins = major_axis_twins(identity, detail[1], detail[2])
        # a fresh scheduler per batch: schedulers hold state, and chunks may share a pipeline
        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        scheduler.set_timesteps(steps, device=self.device)
        latents = latents * scheduler.init_noise_sigma
        timesteps = scheduler.timesteps
        if progress:
            from tqdm.auto import tqdm

            timesteps = tqdm(timesteps, desc=f"{self.scheduler_name} x{len(seeds)}", leave=False)
        stale = {}  # alternate: the reference differences last evaluated
        for step, t in enumerate(timesteps):
            guided = use_cfg and (interval is None or interval[0] <= int(t) <= interval[1])
            if alternate:
                output = self._alternate_step(
                    latents,
                    t,
                    scheduler,
                    identity,
                    twins,
                    step % 2 == 1 and "unconditional" in stale,
                    guidance_scale,
                    detail[0],
                    stale,
                    guided,
                )
                latents = self._scheduler_step(scheduler, output, t, latents, generators)
                continue
            step_identity, step_drop = (identity_in, drop) if guided else (identity, None)
            if twins is not None:  # one more branch: the condition's major-axis twin
                step_identity = torch.cat([step_identity, twins])
                if step_drop is not None:
                    step_drop = torch.cat([step_drop, torch.zeros_like(step_drop[: len(twins)])])
            branches = len(step_identity) // len(identity)
            model_in = torch.cat([latents] * branches) if branches > 1 else latents
            model_in = scheduler.scale_model_input(model_in, t)
            t_batch = torch.full((len(model_in),), int(t), device=self.device, dtype=torch.long)
            output = self.model(model_in, t_batch, step_identity, step_drop)
            twin_output = None
            if twins is not None:
                output, twin_output = output[: -len(twins)], output[-len(twins) :]
            conditional = output
            if guided:
                unconditional, conditional = output.chunk(2)
                output = unconditional + guidance_scale * (conditional - unconditional)
            if twin_output is not None:
                output = output + detail[0] * (conditional - twin_output)
            latents = self._scheduler_step(scheduler, output, t, latents, generators)
        images = latents
        if self.vae is not None:
            scale = getattr(self.vae.config, "scaling_factor", 1.0)
            images = self.vae.decode(latents / scale).sample
        images = images.float().clamp(-1, 1)
        if images.shape[-1] != output_size:
            images = F.interpolate(
                images, size=(output_size, output_size), mode="bicubic", align_corners=False
            ).clamp(-1, 1)
        return ((images + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()

    def _scheduler_step(self, scheduler, output, t, latents, generators):
        step_kwargs = {}
        if "generator" in scheduler.step.__code__.co_varnames:
            step_kwargs["generator"] = generators
        latents = scheduler.step(output.float(), t, latents.float(), **step_kwargs).prev_sample
        return latents.to(self.dtype)

    def _alternate_step(
        self, latents, t, scheduler, identity, twins, odd, scale, detail, stale, guided=True
    ):
        """One step of alternating guidance: the condition and, on even steps, the
        unconditional branch, on odd steps the twin. A fresh unconditional output gives
        plain classifier-free guidance (bit for bit, when no twin has been evaluated yet);
        the other reference enters through its last difference from the condition.
        Unguided (outside the guidance interval): the condition alone, one model call."""
        n = len(identity)
        if not guided:
            model_in = scheduler.scale_model_input(latents, t)
            t_batch = torch.full((n,), int(t), device=self.device, dtype=torch.long)
            return self.model(model_in, t_batch, identity, None)
        model_in = scheduler.scale_model_input(torch.cat([latents, latents]), t)
        t_batch = torch.full((2 * n,), int(t), device=self.device, dtype=torch.long)
        if odd:  # (condition, twin)
            conditional, twin = self.model(
                model_in, t_batch, torch.cat([identity, twins]), None
            ).chunk(2)
            stale["twin"] = conditional - twin
            output = conditional + (scale - 1) * stale["unconditional"]
            return output + detail * stale["twin"]
        # (unconditional, condition): the order and formula of plain guidance
        drop = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)])
        unconditional, conditional = self.model(
            model_in, t_batch, torch.cat([identity, identity]), drop.to(self.device)
        ).chunk(2)
        stale["unconditional"] = conditional - unconditional
        output = unconditional + scale * (conditional - unconditional)
        return output + detail * stale["twin"] if "twin" in stale else output


def load_vae(folder: str | Path):
    """A diffusers AutoencoderKL or VQModel from a local folder (safetensors)."""
    from diffusers import AutoencoderKL, VQModel

    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no VAE at {folder} (expected config.json + weights)")
    import json

    kind = json.loads(config_path.read_text()).get("_class_name", "AutoencoderKL")
    cls = VQModel if kind == "VQModel" else AutoencoderKL
    return cls.from_pretrained(folder, use_safetensors=True)
