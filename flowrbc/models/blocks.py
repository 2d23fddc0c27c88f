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

from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from flowrbc.models.config import ModelConfig
from flowrbc.models.norms import SetNorm, add_residual, make_norm, norm_act, norm_linear
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
            return add_residual(x, norm_linear(self.norm2, self.fc2, h, mask, True, self.lean))
        if self.residual == "nonclean":
            h = norm_act(self.norm1, self.fc1(self._centre(x, mask)), mask)
            return F.relu(x + self.norm2(self.fc2(h), mask))
        return norm_act(self.norm1, self.fc1(self._centre(x, mask)), mask)

    @torch.no_grad()
    def whole_set_(self, h: Tensor, chunk: int) -> bool:
        """``h <- block(h)`` in place for one set's every element, h (N, D), ``chunk`` elements
        at a time, each set norm with the whole set's statistics (a pass to gather them, then
        one to apply): exact, with no (N, D) temporary. False, h untouched, for a block that
        needs the set at once (an equivariant layer; a non-clean block with a set norm)."""
        set_norms = isinstance(self.norm1, SetNorm) or isinstance(getattr(self, "norm2", None), SetNorm)
        if self.equivariant != "none" or (self.residual == "nonclean" and set_norms):
            return False

        def parts() -> Iterator[Tensor]:
            return (h[a : a + chunk] for a in range(0, len(h), chunk))  # views: (n, D)

        if self.residual == "clean":
            s1 = _stats(self.norm1, parts)

            def first(x: Tensor) -> Tensor:
                return self.fc1(F.relu(_norm(self.norm1, x, s1)))

            s2 = _stats(self.norm2, lambda: map(first, parts()))
            for part in parts():
                part += self.fc2(F.relu(_norm(self.norm2, first(part), s2)))
        elif self.residual == "none":
            s1 = _stats(self.norm1, lambda: map(self.fc1, parts()))
            for part in parts():
                part.copy_(F.relu(_norm(self.norm1, self.fc1(part), s1)))
        else:
            for part in parts():
                part.copy_(self(part[None])[0])
        return True


def _stats(norm: nn.Module, parts: Callable[[], Iterator[Tensor]]) -> tuple[float, float] | None:
    """A set norm's statistics over every entry of one set given in parts: (mean, variance),
    summed in float64; None for a norm that acts on each element alone."""
    if not isinstance(norm, SetNorm):
        return None
    n, total, squares = 0, 0.0, 0.0
    for part in parts():
        p = part.double()
        n, total, squares = n + p.numel(), total + float(p.sum()), squares + float((p * p).sum())
    mean = total / n
    return mean, max(squares / n - mean * mean, 0.0)


def _norm(norm: nn.Module, x: Tensor, stats: tuple[float, float] | None) -> Tensor:
    """``norm`` on part of one set, x (n, D): a set norm with the whole set's ``stats``."""
    return norm.with_stats(x, *stats) if stats is not None else norm(x[None])[0]


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

    @torch.no_grad()
    def whole_set(self, x: Tensor, chunk: int) -> Tensor | None:
        """One set's every element, x (N, C) -> (N, D), ``chunk`` elements at a time
        (``ElementBlock.whole_set_``): the same as ``self(x[None])[0]`` with one (N, D) tensor
        in memory. None where a block needs the set at once."""
        h = torch.cat([self.input(x[a : a + chunk]) for a in range(0, len(x), chunk)])  # (N, D)
        return h if all(block.whole_set_(h, chunk) for block in self.blocks) else None

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        h = self.input(x)  # (B, N, D)
        recompute = self.recompute and self.training and h.requires_grad
        return run_blocks(self.blocks, h, mask, recompute)
