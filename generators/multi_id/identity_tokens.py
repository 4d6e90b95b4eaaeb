"""Identity embedding -> K tokens in the UNet's cross-attention space.

A few tokens per identity (IP-Adapter / WithAnyone style) give the attention more than
one key to match, so pose and expression cues can be split across tokens.
"""

from __future__ import annotations

import torch
from torch import nn


class IdentityTokenizer(nn.Module):
    """MLP: (..., id_dim) unit embeddings -> (..., num_tokens, token_dim) tokens.

    ``hidden=0``: one linear layer and no norm, the form of IDiff-Face's context projection,
    so an adapter can start from a trained IDiff-Face identity path exactly
    (``multi_id.base.adapter_from_idiff_face``).
    """

    def __init__(self, id_dim: int, token_dim: int, num_tokens: int = 8, hidden: int | None = None):
        super().__init__()
        hidden = max(token_dim * 2, id_dim) if hidden is None else hidden
        self.id_dim, self.token_dim, self.num_tokens = id_dim, token_dim, num_tokens
        self.hidden = hidden
        if hidden == 0:
            self.mlp = nn.Sequential(nn.Linear(id_dim, num_tokens * token_dim))
            self.norm = nn.Identity()
        else:
            self.mlp = nn.Sequential(
                nn.Linear(id_dim, hidden), nn.GELU(), nn.Linear(hidden, num_tokens * token_dim)
            )
            self.norm = nn.LayerNorm(token_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if embeddings.shape[-1] != self.id_dim:
            raise ValueError(f"expected {self.id_dim}-d identities, got {embeddings.shape[-1]}-d")
        tokens = self.mlp(embeddings)
        return self.norm(tokens.view(*embeddings.shape[:-1], self.num_tokens, self.token_dim))

    def config(self) -> dict:
        return {
            "id_dim": self.id_dim,
            "token_dim": self.token_dim,
            "num_tokens": self.num_tokens,
            "hidden": self.hidden,
        }
