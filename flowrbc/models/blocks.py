r"""Per-element blocks shared by the set model families.

An ``ElementEncoder`` is an input linear layer followed by ``depth`` per-element blocks;
Deep Sets pools its output, the Slot Set Encoder feeds it to its slots. The residual kind
decides the block (Zhang et al., "Set Norm and Equivariant Skip Connections"):

- ``clean``:    :math:`x + f(x)`, :math:`f = \mathrm{Linear}\circ\mathrm{relu}\circ\mathrm{norm}` twice
  (pre-norm; the identity path from input to pooling is never normalised: Deep Sets++).
- ``nonclean``: :math:`\mathrm{relu}(x + f(x))`, :math:`f = \mathrm{norm}\circ\mathrm{Linear}\circ
  \mathrm{relu}\circ\mathrm{norm}\circ\mathrm{Linear}` (ResNet-v1 style, post-add nonlinearity).
- ``none``:     :math:`\mathrm{relu}(\mathrm{norm}(\mathrm{Linear}(x)))` (one layer per block).

``equivariant="mean"|"max"`` gives the original Deep Sets layer, which feeds
:math:`x - \mathrm{pool}(x)` to each block's first linear layer. It depends on the whole
set, so unlike the plain per-element blocks it is not mini-batch consistent.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from flowrbc.models.config import ModelConfig
from flowrbc.models.norms import make_norm, norm_act, norm_linear
from flowrbc.models.pooling import pool


class ElementBlock(nn.Module):
    """One per-element block ``(B, N, D) -> (B, N, D)``; see the module docstring."""

    def __init__(self, dim: int, norm: str, residual: str, equivariant: str = "none", lean: bool = False) -> None:
        super().__init__()
        self.residual = residual
        self.equivariant = equivariant
        self.lean = lean  # ModelConfig.lean: see norm_linear
        self.fc1 = nn.Linear(dim, dim)
        self.norm1 = make_norm(norm, dim)
        if residual != "none":
            self.fc2 = nn.Linear(dim, dim)
            self.norm2 = make_norm(norm, dim)

    def _centre(self, x: Tensor, mask: Tensor | None) -> Tensor:
        if self.equivariant == "none":
            return x
        return x - pool(x, mask, self.equivariant).unsqueeze(1)  # (B, N, D)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if self.residual == "clean":
            if self.equivariant == "none":
                h = norm_linear(self.norm1, self.fc1, x, mask, True, self.lean)  # (B, N, D)
            else:
                h = self.fc1(self._centre(norm_act(self.norm1, x, mask), mask))
            return x + norm_linear(self.norm2, self.fc2, h, mask, True, self.lean)
        if self.residual == "nonclean":
            h = norm_act(self.norm1, self.fc1(self._centre(x, mask)), mask)
            return F.relu(x + self.norm2(self.fc2(h), mask))
        return norm_act(self.norm1, self.fc1(self._centre(x, mask)), mask)


def run_blocks(blocks: nn.ModuleList, x: Tensor, mask: Tensor | None, recompute: bool) -> Tensor:
    """Apply ``blocks`` in order; with ``recompute`` (training) keep only block inputs for backward."""
    for block in blocks:
        if recompute:
            x = checkpoint(block, x, mask, use_reentrant=False)
        else:
            x = block(x, mask)
    return x


class ElementEncoder(nn.Module):
    """Input linear ``C -> D`` then ``depth`` element blocks: (B, N, C) -> (B, N, D)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.recompute = config.checkpoint
        self.input = nn.Linear(config.in_features, config.width)
        self.blocks = nn.ModuleList(
            ElementBlock(config.width, config.norm, config.residual, config.equivariant, config.lean)
            for _ in range(config.depth)
        )

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.input(x)  # (B, N, D)
        recompute = self.recompute and self.training and h.requires_grad
        return run_blocks(self.blocks, h, mask, recompute)
