"""ID-Booth settings: LoRA shape, fine-tuning schedule, identity loss and sampling."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from facefoundry.generators.settings import GeneratorSettings

DEFAULT_TEMPLATES = (
    "face portrait photo of {sex}{token} person, {background} background",
    "face portrait photo of {sex}{token} person, {expression}, {lighting}",
    "side-portrait photo of {sex}{token} person, {background} background",
    "close-up photo of {sex}{token} person, {pose}, {lighting}",
)
BACKGROUNDS = ("forest", "city street", "office", "beach", "plain grey", "library", "park")
POSES = ("looking left", "looking right", "looking up", "head tilted", "frontal")
EXPRESSIONS = ("smiling", "neutral expression", "laughing", "serious", "surprised")
LIGHTING = ("soft daylight", "studio lighting", "dim indoor light", "harsh sunlight")
NEGATIVE_PROMPT = (
    "cartoon, painting, illustration, deformed, blurry, low quality, multiple people, "
    "cropped face, watermark, text"
)


class IDBoothSettings(GeneratorSettings):
    """Recipe section ``generate`` for ``family: id_booth``: one LoRA per identity on a
    local SD-family pipeline (``model``); defaults follow the ID-Booth paper."""

    family: Literal["id_booth"] = "id_booth"
    model: str = Field(
        "", description="local diffusers SD 1.5 / 2.1 / SDXL folder, or an IDiff-Face pixel model"
    )
    batch_size: int = Field(8, ge=1)
    references_model: str = Field(
        "models/idiff-face-lfw", description="IDiff-Face folder that draws reference images"
    )
    references: str | None = Field(
        None, description="folder of {identity}/*.jpg photos; None: one IDiff-Face image each"
    )
    references_per_identity: int = Field(1, ge=1)
    prior_images: str | None = Field(None, description="class images; drawn by the base if absent")
    prior_count: int = Field(200, ge=1)
    prior_steps: int = Field(30, ge=1, description="sampling steps of drawn prior images")
    prior_guidance_scale: float = Field(5.0, ge=0.0)
    token: str = "sks"
    class_prompt: str = "photo of a person"
    rank: int = Field(4, ge=1)
    alpha: float = Field(4.0, gt=0)
    target_modules: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0")
    resolution: int = Field(512, ge=8)
    train_steps: int = Field(400, ge=1, description="fine-tune steps per identity")
    learning_rate: float = 1e-4
    weight_decay: float = 1e-2
    prior_weight: float = 1.0
    triplet_margin: float = 1.0  # PyTorch's default, as in the reference
    triplet_weight: float = 1.0
    face_crop: Literal["detect", "aligned"] = Field(
        "detect", description="detect: YuNet landmarks; aligned: images are template-aligned"
    )
    identity_model: str = Field(
        "", description='recognizer checkpoint for the triplet loss, or "sface" (torch SFace)'
    )
    identity_backbone: str = "r50"
    identity_features: int = Field(512, ge=1, description="embedding size of identity_model")
    steps: int = Field(30, ge=1, description="sampling steps")
    guidance_scale: float = 5.0
    scheduler: Literal["dpmsolver++", "unipc", "ddim", "ddpm", "euler"] = "dpmsolver++"
    templates: tuple[str, ...] = DEFAULT_TEMPLATES
    negative_prompt: str = NEGATIVE_PROMPT
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"

    # what decides an identity's adapter (with the base and reference models' checksums,
    # the recipe seed and the identity's embedding): sampling settings are not here, so
    # changing them reuses every adapter
    ADAPTER_FIELDS: ClassVar[tuple[str, ...]] = (
        "references",
        "references_per_identity",
        "prior_images",
        "prior_count",
        "prior_steps",
        "prior_guidance_scale",
        "token",
        "class_prompt",
        "negative_prompt",
        "rank",
        "alpha",
        "target_modules",
        "resolution",
        "train_steps",
        "learning_rate",
        "weight_decay",
        "prior_weight",
        "triplet_margin",
        "triplet_weight",
        "face_crop",
        "identity_model",
        "identity_backbone",
        "identity_features",
        "mixed_precision",
    )
