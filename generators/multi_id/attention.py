"""Box-routed identity cross-attention for diffusers UNets (WithAnyone / IP-Adapter style).

``IdentityAttnProcessor`` replaces the processor of each cross-attention layer (``attn2``)
and computes ``text_attention + to_out_id(identity_attention)``: the text term is the
unchanged base computation (AttnProcessor2_0), the identity term has its own trainable
``to_k_id`` / ``to_v_id`` and a zero-initialised ``to_out_id``, so an untrained adapter
leaves the base model's output bit for bit unchanged. Each query position attends only to
the tokens of the identity whose box covers it; positions outside every box get no
identity term (the masks are re-computed at each layer's resolution from the boxes).

Conditioning is passed through a shared ``IdentityContext`` (``adapter.condition(...)``),
not ``cross_attention_kwargs``: the UNet forwards those kwargs to every processor,
self-attention included (whose default processor warns and drops unknown keys), and
every sampler loop would have to thread them through; a context leaves the UNet call
untouched, so any diffusers scheduler loop works as is.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from facefoundry.generators.multi_id.identity_tokens import IdentityTokenizer
from facefoundry.generators.multi_id.layout import box_masks


@dataclass
class IdentityContext:
    """What the processors read during one UNet forward.

    tokens: (B, K, T, D) identity tokens; boxes: (B, K, 4) normalised layout boxes;
    latent_hw: the UNet input's (H, W), to infer each layer's grid; record: keep each
    layer's identity term (for tests and the leakage benchmark).
    """

    tokens: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    latent_hw: tuple[int, int] | None = None
    record: bool = False
    region_masks: bool = True


def _grid(positions: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    height, width = latent_hw
    factor = math.sqrt(height * width / positions)
    h, w = round(height / factor), round(width / factor)
    if h * w != positions:
        raise ValueError(f"cannot infer an attention grid for {positions} positions of {latent_hw}")
    return h, w


class IdentityAttnProcessor(nn.Module):
    """Text cross-attention plus a box-masked identity cross-attention term."""

    def __init__(self, inner_dim: int, out_dim: int, token_dim: int, context: IdentityContext):
        super().__init__()
        self.to_k_id = nn.Linear(token_dim, inner_dim, bias=False)
        self.to_v_id = nn.Linear(token_dim, inner_dim, bias=False)
        self.to_out_id = nn.Linear(inner_dim, out_dim)
        nn.init.zeros_(self.to_out_id.weight)
        nn.init.zeros_(self.to_out_id.bias)
        self.context = context
        self.scale = 1.0  # inference-time strength, not trained
        self.last_identity_term: torch.Tensor | None = None

    def identity_term(
        self, attn, query: torch.Tensor, batch: int, positions: int
    ) -> torch.Tensor | None:
        """(B, N, out_dim) identity term, zero outside every box; None without conditioning."""
        ctx = self.context
        if ctx.tokens is None or ctx.boxes is None:
            return None
        tokens, boxes = ctx.tokens, ctx.boxes
        if tokens.shape[0] != batch:  # e.g. classifier-free guidance doubled the batch
            if batch % tokens.shape[0]:
                raise ValueError(f"identity batch {tokens.shape[0]} does not divide {batch}")
            repeat = batch // tokens.shape[0]
            tokens, boxes = tokens.repeat(repeat, 1, 1, 1), boxes.repeat(repeat, 1, 1)
        _, k, t, d = tokens.shape
        h, w = _grid(positions, ctx.latent_hw)
        masks = box_masks(boxes.float(), h, w)  # (B, K, N)
        if not ctx.region_masks:  # identity attention over the whole image
            masks = torch.ones_like(masks)
        covered = masks.any(1)  # (B, N)
        allowed = masks.transpose(1, 2).repeat_interleave(t, dim=2)  # (B, N, K*T)
        # rows with no identity would be all -inf (NaN): let them attend freely, zero later
        allowed = allowed | ~covered[..., None]
        flat = tokens.reshape(batch, k * t, d).to(query.dtype)
        heads, head_dim = attn.heads, query.shape[-1] // attn.heads
        key = self.to_k_id(flat).view(batch, -1, heads, head_dim).transpose(1, 2)
        value = self.to_v_id(flat).view(batch, -1, heads, head_dim).transpose(1, 2)
        q = query.view(batch, -1, heads, head_dim).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, key, value, attn_mask=allowed[:, None])
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim)
        out = torch.where(covered[..., None], out, torch.zeros_like(out))
        term = self.to_out_id(out) * self.scale
        term = torch.where(covered[..., None], term, torch.zeros_like(term))
        if ctx.record:
            self.last_identity_term = term.detach()
        return term

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, positions, _ = hidden_states.shape
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        q = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        k = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        v = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            q = attn.norm_q(q)
        if attn.norm_k is not None:
            k = attn.norm_k(k)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        out = attn.to_out[1](attn.to_out[0](out))
        term = self.identity_term(attn, query, batch, positions)
        if term is not None:
            out = out + term.to(out.dtype)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class IdentityAdapter(nn.Module):
    """The trainable part: the tokenizer plus one identity processor per ``attn2`` layer."""

    def __init__(self, tokenizer: IdentityTokenizer, processors: dict[str, IdentityAttnProcessor]):
        super().__init__()
        self.tokenizer = tokenizer
        self.layer_names = sorted(processors)
        self.processors = nn.ModuleDict(
            {name.replace(".", "__"): processors[name] for name in self.layer_names}
        )
        self.context = next(iter(processors.values())).context if processors else IdentityContext()

    def processor(self, name: str) -> IdentityAttnProcessor:
        return self.processors[name.replace(".", "__")]

    @contextlib.contextmanager
    def condition(
        self,
        embeddings: torch.Tensor,
        boxes: torch.Tensor,
        latent_hw: tuple[int, int],
        record: bool = False,
    ) -> Iterator[torch.Tensor]:
        """Within the block every UNet forward is conditioned on (B, K, id_dim) identities
        placed at (B, K, 4) boxes; yields the tokens (gradients flow to the tokenizer)."""
        tokens = self.tokenizer(embeddings)
        ctx = self.context
        ctx.tokens, ctx.boxes, ctx.latent_hw, ctx.record = tokens, boxes, tuple(latent_hw), record
        try:
            yield tokens
        finally:
            ctx.tokens = ctx.boxes = ctx.latent_hw = None
            ctx.record = False

    def identity_terms(self) -> dict[str, torch.Tensor]:
        """The recorded identity term of each layer (after a forward with record=True)."""
        return {
            name: self.processor(name).last_identity_term
            for name in self.layer_names
            if self.processor(name).last_identity_term is not None
        }

    @property
    def region_masks(self) -> bool:
        return self.context.region_masks

    def set_region_masks(self, enabled: bool) -> None:
        """Route each position to its own box's identity (True, the method) or let every
        position attend to all identities (False: WithAnyone's no-mask baseline)."""
        self.context.region_masks = bool(enabled)

    def set_scale(self, scale: float) -> None:
        for processor in self.processors.values():
            processor.scale = float(scale)


def cross_attention_layers(unet) -> list[str]:
    """Names of the UNet's cross-attention modules (``...attn2``)."""
    return [
        name[: -len(".processor")]
        for name in unet.attn_processors
        if name.endswith("attn2.processor")
    ]


def install_identity_adapter(
    unet, id_dim: int, num_tokens: int = 8, tokenizer: IdentityTokenizer | None = None
) -> IdentityAdapter:
    """Put identity processors on every ``attn2`` of ``unet``; other processors are kept.

    Freezes the whole UNet and returns the adapter, whose parameters are the only
    trainable ones (``adapter_parameters``).
    """
    token_dim = unet.config.cross_attention_dim
    tokenizer = tokenizer or IdentityTokenizer(id_dim, token_dim, num_tokens)
    context = IdentityContext()
    processors: dict[str, IdentityAttnProcessor] = {}
    table = dict(unet.attn_processors)
    reference = next(unet.parameters())
    for name in cross_attention_layers(unet):
        attn = unet.get_submodule(name)
        processor = IdentityAttnProcessor(
            attn.to_q.out_features, attn.to_out[0].out_features, attn.to_k.in_features, context
        ).to(reference.device, reference.dtype)
        processors[name] = processor
        table[name + ".processor"] = processor
    unet.set_attn_processor(table)
    adapter = IdentityAdapter(tokenizer.to(reference.device), processors)
    unet.requires_grad_(False)
    adapter.requires_grad_(True)
    return adapter


def remove_identity_adapter(unet) -> None:
    """Restore the plain AttnProcessor2_0 on every ``attn2`` layer."""
    table = dict(unet.attn_processors)
    for name in cross_attention_layers(unet):
        table[name + ".processor"] = AttnProcessor2_0()
    unet.set_attn_processor(table)


def adapter_parameters(adapter: IdentityAdapter) -> list[nn.Parameter]:
    """The only parameters that train: tokenizer + identity k/v/out of every layer."""
    return [p for p in adapter.parameters() if p.requires_grad]
