"""Decoder and heads, and ``SetModel``: the contract every set model keeps.

``model(x, mask=None, covariates=None) -> {head: (B, out)}`` and
``model.embed(x, mask=None) -> (B, D)``. One encoder serves several targets: a shared decoder
MLP maps the pooled embedding, concatenated with ``config.covariates`` per-set covariates
(sex, age, ...; ``[z, c]`` of size D + n_cov), to a hidden vector, then one linear head per
entry of ``config.outputs`` (regression values or classification logits; the loss decides
which). Covariates left out are zeros, the encoding of "unknown".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowrbc.models.config import ModelConfig
from flowrbc.models.pooling import check_set


class Decoder(nn.Module):
    """``decoder_depth`` x (Linear -> ReLU) shared trunk, then one Linear per output head."""

    def __init__(self, embed_dim: int, width: int, depth: int, outputs: dict[str, int]) -> None:
        super().__init__()
        dims = [embed_dim] + [width] * (depth if outputs else 0)  # no heads: no trunk
        self.trunk = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.heads = nn.ModuleDict({name: nn.Linear(dims[-1], n) for name, n in outputs.items()})

    def forward(self, z: Tensor) -> dict[str, Tensor]:
        if not self.heads:
            return {}
        for layer in self.trunk:
            z = F.relu(layer(z))  # (B, width)
        return {name: head(z) for name, head in self.heads.items()}  # (B, out)


class SetModel(nn.Module):
    """Base class: input checks once, ``embed`` from the subclass, shared decoder.

    Subclasses implement ``_embed(x, mask) -> (B, embed_dim)`` for checked inputs, where
    ``mask`` is None when no element is padded (the fast path without masking ops).
    """

    def __init__(self, config: ModelConfig, embed_dim: int) -> None:
        super().__init__()
        self.config = config
        self.embed_dim = embed_dim
        self.decoder = Decoder(embed_dim + config.covariates, config.width, config.decoder_depth, config.outputs)

    def forward(self, x: Tensor, mask: Tensor | None = None, covariates: Tensor | None = None) -> dict[str, Tensor]:
        return self.decode(self.embed(x, mask), covariates)

    def decode(self, z: Tensor, covariates: Tensor | None = None) -> dict[str, Tensor]:
        """Heads from a set embedding ``z`` (B, D) and covariates (B, n_cov) (None: unknown)."""
        n = self.config.covariates
        if covariates is None:
            if n:
                covariates = z.new_zeros(z.shape[0], n)  # (B, n_cov): all unknown
        elif n == 0:
            raise ValueError("covariates: this model takes none (config.covariates = 0)")
        elif covariates.shape != (z.shape[0], n):
            raise ValueError(f"covariates: expected shape ({z.shape[0]}, {n}), got {tuple(covariates.shape)}")
        if n:
            z = torch.cat([z, covariates.to(device=z.device, dtype=z.dtype)], dim=-1)  # (B, D + n_cov)
        return self.decoder(z)

    def embed(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Pooled set embedding ``(B, embed_dim)`` (before the decoder)."""
        x, mask = check_set(x, mask, self.config.in_features)
        return self._embed(x, mask)

    def _embed(self, x: Tensor, mask: Tensor | None) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"family={c.family}, depth={c.depth}, width={c.width}, norm={c.norm}, "
            f"residual={c.residual}, covariates={c.covariates}, outputs={c.outputs}"
        )
