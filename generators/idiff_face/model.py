"""IDiff-Face: a diffusers UNet conditioned on an identity embedding by cross-attention.

The identity vector (any dimension) is projected to a few context tokens; during
training Contextual Partial Dropout (CPD) zeroes *elements* of the projected context
(not whole vectors), which is what lets IDiff-Face vary pose and lighting while
keeping identity. A learned empty context stands in for "no identity" so samplers can
use classifier-free guidance.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from diffusers import UNet2DConditionModel
from safetensors.torch import load_file, save_file
from torch import nn

from facefoundry.errors import UsageError
from facefoundry.generators.idiff_face.config import IDiffFaceConfig

logger = logging.getLogger(__name__)

CONFIG_NAME = "idiff_face.json"
CONDITIONER_WEIGHTS = "id_conditioner.safetensors"


class ModelFolderError(UsageError, FileNotFoundError):
    """A model folder that is missing or incomplete; the message says what is absent."""


def read_config(folder: str | Path) -> IDiffFaceConfig:
    """The model's config alone (no weights): what identity vectors it expects."""
    path = Path(folder) / CONFIG_NAME
    if not path.is_file():
        raise ModelFolderError(
            f"generator model {folder} not found (no {CONFIG_NAME}); set generate.model to an "
            "IDiff-Face model folder (e.g. models/idiff-face-lfw)"
        )
    return IDiffFaceConfig.model_validate(json.loads(path.read_text()))


class IdentityConditioner(nn.Module):
    """Identity embedding -> context tokens (with CPD) and an optional time-embedding term."""

    def __init__(self, config: IDiffFaceConfig):
        super().__init__()
        self.config = config
        self.to_context = nn.Linear(config.id_dim, config.context_tokens * config.context_dim)
        self.empty_context = nn.Parameter(torch.zeros(config.context_tokens, config.context_dim))

    def forward(
        self, identity: torch.Tensor, drop_identity: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Context tokens, B x tokens x dim. ``drop_identity`` (B bools) selects the empty
        context for those rows (classifier-free guidance training and sampling)."""
        if identity.shape[-1] != self.config.id_dim:
            raise ValueError(
                f"identity embeddings have {identity.shape[-1]} dims but this model was "
                f"trained on {self.config.id_dim}-d {self.config.conditioning_embedder} vectors"
            )
        context = self.to_context(identity).view(
            -1, self.config.context_tokens, self.config.context_dim
        )
        if self.training and self.config.cpd_p > 0:
            context = contextual_partial_dropout(context, self.config.cpd_p)
        if drop_identity is not None:
            empty = self.empty_context.expand_as(context)
            context = torch.where(drop_identity.view(-1, 1, 1), empty, context)
        return context


def contextual_partial_dropout(context: torch.Tensor, p: float) -> torch.Tensor:
    """Element-wise dropout of the projected context (IDiff-Face's CPD), rescaled by 1/(1-p)."""
    keep = torch.rand_like(context) >= p
    return context * keep / (1.0 - p)


class IDiffFaceModel(nn.Module):
    """UNet + identity conditioner; ``forward`` predicts what ``prediction_type`` says."""

    def __init__(self, config: IDiffFaceConfig, unet: UNet2DConditionModel | None = None):
        super().__init__()
        self.config = config
        self.conditioner = IdentityConditioner(config)
        self.unet = unet if unet is not None else build_unet(config)

    def forward(
        self,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        identity: torch.Tensor,
        drop_identity: torch.Tensor | None = None,
    ) -> torch.Tensor:
        context = self.conditioner(identity, drop_identity)
        class_labels = None
        if self.config.id_in_time_embedding:
            class_labels = context.flatten(1)
        return self.unet(
            sample, timesteps, encoder_hidden_states=context, class_labels=class_labels
        ).sample

    # --- folders: a diffusers unet/ plus our conditioner and config -------------------
    def save_pretrained(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(folder / "unet", safe_serialization=True)
        state = {k: v.detach().contiguous() for k, v in self.conditioner.state_dict().items()}
        save_file(state, str(folder / CONDITIONER_WEIGHTS))
        (folder / CONFIG_NAME).write_text(self.config.model_dump_json(indent=2))
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> IDiffFaceModel:
        folder = Path(folder)
        missing = [
            name
            for name in (CONFIG_NAME, CONDITIONER_WEIGHTS, "unet/config.json")
            if not (folder / name).is_file()
        ]
        if missing:
            raise ModelFolderError(
                f"{folder} is not an IDiff-Face model folder: missing {', '.join(missing)} "
                "(train one with `facefoundry generator train` or point at models/idiff-face-lfw)"
            )
        config = IDiffFaceConfig.model_validate(json.loads((folder / CONFIG_NAME).read_text()))
        unet = UNet2DConditionModel.from_pretrained(
            folder / "unet", use_safetensors=True, low_cpu_mem_usage=False
        )
        model = cls(config, unet)
        model.conditioner.load_state_dict(load_file(str(folder / CONDITIONER_WEIGHTS)))
        return model.eval()


def build_unet(config: IDiffFaceConfig) -> UNet2DConditionModel:
    """A diffusers UNet2DConditionModel with cross-attention only at ``attention_levels``."""
    levels = len(config.block_out_channels)
    down = [
        "CrossAttnDownBlock2D" if level in config.attention_levels else "DownBlock2D"
        for level in range(levels)
    ]
    up = [
        "CrossAttnUpBlock2D" if level in config.attention_levels else "UpBlock2D"
        for level in reversed(range(levels))
    ]
    heads = [max(1, c // config.attention_head_dim) for c in config.block_out_channels]
    kwargs = {}
    if config.id_in_time_embedding:
        kwargs = {
            "class_embed_type": "projection",
            "projection_class_embeddings_input_dim": config.context_tokens * config.context_dim,
        }
    return UNet2DConditionModel(
        sample_size=config.sample_size,
        in_channels=config.in_channels,
        out_channels=config.in_channels,
        down_block_types=tuple(down),
        up_block_types=tuple(up),
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        cross_attention_dim=config.context_dim,
        attention_head_dim=tuple(heads),
        norm_num_groups=config.norm_num_groups,
        resnet_time_scale_shift="scale_shift" if config.time_scale_shift else "default",
        **kwargs,
    )


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
