"""Recipe section ``generate`` for ``family: idiff_face``."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, model_validator

from facefoundry.generators.settings import GeneratorSettings


def interval_problem(guidance_interval: tuple[int, int] | None) -> str | None:
    """Why ``guidance_interval`` is unusable (None: it is): an inverted one would silently
    guide no step at all."""
    if guidance_interval is not None and guidance_interval[0] > guidance_interval[1]:
        lo, hi = guidance_interval
        return f"guidance_interval ({lo}, {hi}) is inverted: give lo <= hi"
    return None


def alternate_problem(guidance_scale: float, detail_guidance: float) -> str | None:
    """Why ``detail_alternate`` cannot run with these settings (None: it can). It swaps the
    unconditional branch and the twin step by step, so it needs both guidances."""
    if guidance_scale == 1.0 or not detail_guidance:
        return (
            "detail_alternate alternates classifier-free and detail guidance: it needs "
            "guidance_scale != 1 and detail_guidance > 0"
        )
    return None


class IDiffFaceSettings(GeneratorSettings):
    """An IDiff-Face model folder and how it samples."""

    family: Literal["idiff_face"] = "idiff_face"
    model: str = Field("models/idiff-face-lfw", description="IDiff-Face model folder")
    scheduler: Literal["dpmsolver++", "sde-dpmsolver++", "unipc", "ddim", "ddpm"] = "dpmsolver++"
    steps: int = Field(25, ge=1)
    guidance_scale: float = Field(1.0, ge=0.0)
    guidance_interval: tuple[int, int] | None = Field(
        None,
        description="guidance only for timesteps lo <= t <= hi (None: every step); with "
        "detail_alternate, detail guidance too: outside it the condition alone (one model call)",
    )
    detail_guidance: float = Field(
        0.0,
        ge=0.0,
        description="h: adds h x (cond - cond(twin)) per step, the twin keeping only the identity "
        "prior's detail_axes strongest axes; spreads identities apart (one more model call)",
    )
    detail_axes: int = Field(32, ge=1, le=4096, description="axes a detail-guidance twin keeps")
    detail_alternate: bool = Field(
        False,
        description="with guidance_scale and detail_guidance: evaluate the unconditional branch "
        "and the twin on alternate steps, reusing the other's last difference (two model calls "
        "per step instead of three)",
    )
    context_noise: float = Field(0.0, ge=0.0, description="std of per-sample identity jitter")
    compile: bool = Field(
        False,
        description="torch.compile the UNet once per process (C++ compiler needed; about a "
        "minute the first time on a machine, seconds once cached): 1.3-1.5x faster on CPU; "
        "falls back to eager sampling with a warning if compilation fails. Changes images "
        "by float rounding only, so it never re-runs generation",
    )

    SCHEDULING_FIELDS: ClassVar[tuple[str, ...]] = (
        *GeneratorSettings.SCHEDULING_FIELDS,
        "compile",
    )

    @model_validator(mode="after")
    def _check_guidance(self):
        problem = interval_problem(self.guidance_interval)
        if problem:
            raise ValueError(problem)
        if self.detail_alternate:
            problem = alternate_problem(self.guidance_scale, self.detail_guidance)
            if problem:
                raise ValueError(problem)
        return self
