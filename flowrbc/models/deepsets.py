r"""Deep Sets (Zaheer et al. 2017) and Deep Sets++ (Zhang et al. 2022).

.. math::  f(X) = \rho\Big(\mathrm{pool}_{i}\ \phi(x_i)\Big)

:math:`\phi` is the ``ElementEncoder`` of ``flowrbc.models.blocks``: an input linear layer
followed by ``depth`` per-element blocks, whose residual kind (``none`` for Deep Sets,
``clean`` for Deep Sets++) and optional equivariant layer are described there.
"""

from __future__ import annotations

from torch import Tensor

from flowrbc.models.blocks import ElementEncoder
from flowrbc.models.config import ModelConfig
from flowrbc.models.heads import SetModel
from flowrbc.models.pooling import pool


class DeepSets(SetModel):
    """Deep Sets / Deep Sets++: element encoder -> masked pooling -> decoder -> heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, embed_dim=config.width)
        self.encoder = ElementEncoder(config)

    def _embed(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return pool(self.encoder(x, mask), mask, self.config.pooling)  # (B, D)

    def embed_whole(self, x: Tensor, chunk: int) -> Tensor:
        """One large set, x (N, C) -> (1, D), ``chunk`` elements at a time where every block
        allows it (``ElementEncoder.whole_set``), else in one pass; the same embedding."""
        h = self.encoder.whole_set(x, chunk)  # (N, D)
        return self.embed(x[None]) if h is None else pool(h[None], None, self.config.pooling)
