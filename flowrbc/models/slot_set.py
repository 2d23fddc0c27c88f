r"""Mini-batch consistent Slot Set Encoder (Bruno et al. 2021, Algorithm 1 of the appendix).

For slots :math:`S \in \mathbb{R}^{K\times h}` and a set (or one chunk of it) :math:`X`:

.. math::
    q = \mathrm{Linear}_q(\mathrm{LN}(S)),\quad k, v = \mathrm{Linear}_{k,v}(X),\quad
    a_{ik} = \sigma(k_i \cdot q_k / \sqrt{d}) + 10^{-8},\quad
    w_{ik} = K a_{ik} / \textstyle\sum_{k'} a_{ik'}

Normalised over the slots, each element's weights sum to K. Algorithm 1 makes them sum to
one; the constant factor changes neither proposition, but without it every slot starts
(:math:`w_{ik} \approx 1/K`) with 1/K of the mean of :math:`v`, the encoder's gradients sit
near 1e-6 and the papers' weight decay pins it there (measured). No quantity mixes two
elements, so
the per-element contributions :math:`c_i = w_i \otimes v_i \in \mathbb{R}^{K\times d}` can be
aggregated over any partition of the set: :math:`\hat S = g_i(c_i)` with g in {sum, mean,
max, min} (mean keeps a running count). Chunked and whole-set encodings are equal
(Proposition 1); permuting the slots permutes :math:`\hat S` (Proposition 2).

Slots. ``random``: learned :math:`\mu, \sigma` and :math:`S = \mu + \sigma\epsilon`, with a
fresh :math:`\epsilon` per set in training and, in eval mode, a fixed :math:`\epsilon` drawn at
construction and saved with the weights (``eval_noise``), so predictions are deterministic
and the K slots stay distinct (:math:`S = \mu` would make all slots equal). ``deterministic``:
learned :math:`S`. All chunks of one set share the slots held in the streaming state.

The readout trap. Because :math:`\sum_k w_{ik}` is constant, :math:`\sum_k \hat S_k \propto \sum_i v_i` for
g = sum: summing (or averaging) the slots is plain sum pooling whatever the slots,
queries and keys. A second SSE stage does not help (its slot sum is again linear in
:math:`\sum_k \hat S_k`). The readout therefore maps each slot through an MLP before
averaging over slots (``mlp``), or flattens ordered deterministic slots (``flatten``);
``sum`` is the collapsing readout, kept only to demonstrate the trap. The MLP uses GELU,
not ReLU: a piecewise-linear map collapses again wherever all K slots share one
activation pattern (measured: at initialisation a ReLU readout ignored the slots).

Stacking. ``slots2 > 0`` adds a second SSE whose set is the K finalised slots of the
first. The first stage is mini-batch consistent; the second runs once on its complete
(K-element) input in ``finalize``, so the stack is mini-batch consistent as well.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowrbc.models.blocks import ElementEncoder
from flowrbc.models.config import ModelConfig
from flowrbc.models.heads import SetModel
from flowrbc.models.pooling import check_set

_MAXMIN_BUDGET = 1 << 24  # elements of the (B, n, K, d) contribution tensor per step for max/min


class SlotSetEncoder(nn.Module):
    """One SSE stage: sets of ``in_dim`` features -> ``K`` slots of ``out_dim`` features.

    Streaming: ``state = enc.init_state(B)``; ``state = enc.update(state, chunk, mask)`` for
    every chunk; ``enc.finalize(state) -> (B, K, out_dim)``. ``enc(x, mask)`` does all three.
    """

    def __init__(
        self, in_dim: int, slots: int, slot_dim: int, out_dim: int, *, init: str = "random", agg: str = "mean"
    ) -> None:
        super().__init__()
        self.slots, self.slot_dim, self.out_dim = slots, slot_dim, out_dim
        self.init, self.agg = init, agg
        self.norm_slots = nn.LayerNorm(slot_dim)
        self.q = nn.Linear(slot_dim, out_dim)
        self.k = nn.Linear(in_dim, out_dim)
        self.v = nn.Linear(in_dim, out_dim)
        if init == "random":
            self.mu = nn.Parameter(torch.randn(1, 1, slot_dim))
            self.log_sigma = nn.Parameter(torch.zeros(1, 1, slot_dim))
            self.register_buffer("eval_noise", torch.randn(slots, slot_dim))
        elif init == "deterministic":
            self.slot_init = nn.Parameter(torch.randn(slots, slot_dim))
        else:
            raise ValueError(f"slot_init: {init!r} is not one of random, deterministic")
        if agg not in ("sum", "mean", "max", "min"):
            raise ValueError(f"slot_agg: {agg!r} is not one of sum, mean, max, min")

    def sample_slots(self, batch: int, generator: torch.Generator | None = None) -> Tensor:
        """Slots for ``batch`` sets: (B, K, h); see the module docstring for eval mode."""
        if self.init == "deterministic":
            return self.slot_init.expand(batch, -1, -1)
        if self.training:
            eps = torch.randn(
                batch, self.slots, self.slot_dim, generator=generator,
                device=self.mu.device, dtype=self.mu.dtype,
            )
        else:
            eps = self.eval_noise.expand(batch, -1, -1)
        return self.mu + self.log_sigma.exp() * eps  # (B, K, h)

    def init_state(
        self, batch: int, *, slots: Tensor | None = None, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Empty aggregate for ``batch`` sets; ``slots: (B, K, h)`` overrides the sampled slots."""
        if slots is None:
            slots = self.sample_slots(batch, generator)
        elif slots.shape != (batch, self.slots, self.slot_dim):
            raise ValueError(
                f"slots: expected shape {(batch, self.slots, self.slot_dim)}, got {tuple(slots.shape)}"
            )
        q = self.q(self.norm_slots(slots)) / math.sqrt(self.out_dim)  # (B, K, d), scaled once
        fill = {"sum": 0.0, "mean": 0.0, "max": float("-inf"), "min": float("inf")}[self.agg]
        acc = torch.full((batch, self.slots, self.out_dim), fill, dtype=q.dtype, device=q.device)
        count = torch.zeros(batch, dtype=q.dtype, device=q.device)
        return {"slots": slots, "q": q, "acc": acc, "count": count}

    def weights(self, x: Tensor, q: Tensor) -> Tensor:
        """Attention normalised over slots: (B, n, D), (B, K, d) -> (B, n, K)."""
        attn = torch.sigmoid(torch.bmm(self.k(x), q.transpose(1, 2))) + 1e-8  # (B, n, K)
        return attn / attn.mean(-1, keepdim=True)  # sums to K over slots: see the module doc

    def update(self, state: dict[str, Tensor], x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Fold the chunk ``x: (B, n, D)`` (``mask: (B, n)``) into the aggregate; returns the new state."""
        if x.ndim != 3 or x.shape[0] != state["acc"].shape[0]:
            raise ValueError(f"x: expected shape ({state['acc'].shape[0]}, n, D), got {tuple(x.shape)}")
        w = self.weights(x, state["q"])  # (B, n, K)
        v = self.v(x)  # (B, n, d)
        if mask is not None:
            w = w * mask.unsqueeze(-1).to(w.dtype)  # padded elements contribute nothing
            count = state["count"] + mask.sum(1).to(w.dtype)
        else:
            count = state["count"] + x.shape[1]
        if self.agg in ("sum", "mean"):
            acc = state["acc"] + torch.bmm(w.transpose(1, 2), v)  # (B, K, d)
        else:
            acc = self._extreme(state["acc"], w, v, mask)
        return {**state, "acc": acc, "count": count}

    def _extreme(self, acc: Tensor, w: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
        """Elementwise max/min over elements of ``w_ik v_id``, in element blocks to bound memory."""
        b, n, k = w.shape
        step = max(1, _MAXMIN_BUDGET // max(1, b * k * v.shape[-1]))
        reduce, combine = (torch.amax, torch.maximum) if self.agg == "max" else (torch.amin, torch.minimum)
        blank = float("-inf") if self.agg == "max" else float("inf")
        for s in range(0, n, step):
            c = w[:, s : s + step, :, None] * v[:, s : s + step, None, :]  # (B, n', K, d)
            if mask is not None:
                c = c.masked_fill(~mask[:, s : s + step, None, None], blank)
            acc = combine(acc, reduce(c, dim=1))
        return acc

    def finalize(self, state: dict[str, Tensor]) -> Tensor:
        """Encoded slots (B, K, d); raises ValueError if a set received no element."""
        count = state["count"]
        if bool((count == 0).any()):
            empty = torch.nonzero(count == 0).flatten().tolist()[:10]
            raise ValueError(f"mask: set(s) {empty} received no real elements in any chunk")
        if self.agg == "mean":
            return state["acc"] / count.view(-1, 1, 1)
        return state["acc"]

    def forward(self, x: Tensor, mask: Tensor | None = None, slots: Tensor | None = None) -> Tensor:
        state = self.init_state(x.shape[0], slots=slots)
        return self.finalize(self.update(state, x, mask))


class SlotReadout(nn.Module):
    """Slots (B, K, d) -> set embedding (B, D) without collapsing to sum pooling."""

    def __init__(self, kind: str, slots: int, dim: int, width: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "mlp":
            self.fc1, self.fc2 = nn.Linear(dim, width), nn.Linear(width, width)
        elif kind == "flatten":
            self.fc1 = nn.Linear(slots * dim, width)
        elif kind != "sum":
            raise ValueError(f"slot_readout: {kind!r} is not one of mlp, flatten, sum")

    def forward(self, s: Tensor) -> Tensor:
        if self.kind == "mlp":
            return self.fc2(F.gelu(self.fc1(s))).mean(1)  # per-slot MLP, then mean over slots
        if self.kind == "flatten":
            return self.fc1(s.flatten(1))  # (B, K*d) -> (B, D); slot order is meaningful
        return s.sum(1)  # the trap: equals sum pooling of v over the elements


class SlotSetModel(SetModel):
    """Element encoder (per element, MBC) -> SSE (-> SSE) -> readout -> decoder -> heads.

    ``model(x, mask)`` equals ``finalize`` after ``update`` over any partition of the set
    into chunks: ``s = model.init_state(B); s = model.update(s, chunk, mask)...;
    model.finalize(s)``. This encodes all events of a file with bounded memory.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, embed_dim=config.width)
        c, d = config, config.width
        self.encoder = ElementEncoder(c)
        self.sse = SlotSetEncoder(d, c.slots, d, d, init=c.slot_init, agg=c.slot_agg)
        self.sse2 = (
            SlotSetEncoder(d, c.slots2, d, d, init=c.slot_init, agg=c.slot_agg) if c.slots2 else None
        )
        self.readout = SlotReadout(c.slot_readout, c.slots2 or c.slots, d, d)

    def init_state(self, batch: int, *, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Empty streaming state for ``batch`` sets (the slots are drawn here, once per set)."""
        if not isinstance(batch, int) or batch < 1:
            raise ValueError(f"batch: expected a positive integer, got {batch!r}")
        return self.sse.init_state(batch, generator=generator)

    def update(self, state: dict[str, Tensor], x: Tensor, mask: Tensor | None = None) -> dict[str, Tensor]:
        """Fold the chunk ``x: (B, n, C)`` into ``state``; a set may have no element in a chunk."""
        x, mask = check_set(x, mask, self.config.in_features, allow_empty=True)
        return self.sse.update(state, self.encoder(x, mask), mask)

    def finalize_embed(self, state: dict[str, Tensor]) -> Tensor:
        """Set embedding (B, D) from a streaming state."""
        s = self.sse.finalize(state)  # (B, K, d)
        if self.sse2 is not None:
            s = self.sse2(s)  # (B, K2, d): the finalised slots are the second stage's set
        return self.readout(s)

    def finalize(self, state: dict[str, Tensor], covariates: Tensor | None = None) -> dict[str, Tensor]:
        """Head outputs from a streaming state; equal to ``model(x, covariates=...)`` on the whole set."""
        return self.decode(self.finalize_embed(state), covariates)

    def _embed(self, x: Tensor, mask: Tensor | None) -> Tensor:
        state = self.sse.init_state(x.shape[0])
        return self.finalize_embed(self.sse.update(state, self.encoder(x, mask), mask))
