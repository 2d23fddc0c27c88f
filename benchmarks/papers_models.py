r"""The eager baseline of ``speed.py``: flowrbc's models' math, written the way the papers' code does it.

Same layers, widths and residual paths as ``flowrbc.models`` (so a ratio compares
implementations, not models), in the style of the reference code of Zaheer et al.,
Lee et al. and Zhang et al.:

- set norm is ``LayerNorm([N, D])`` without affine (one mean and variance per set over its
  N x D entries, so the set size is fixed at construction), then the per-feature scale as
  ``F.linear`` with the weight ``diag_embed(gamma)``: a D x D matrix product;
- attention splits the heads by ``torch.cat`` of slices along the batch axis and forms the
  softmax of :math:`QK^T/\sqrt{d_h}` explicitly (``bmm``), fp32, every intermediate kept;
- data come from a per-item numpy ``Dataset`` through a ``DataLoader``.

Nothing here is masked: every set has N elements, as in the papers' training runs.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class PaperSetNorm(nn.Module):
    def __init__(self, n: int, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm([n, dim], elementwise_affine=False)
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x):
        return F.linear(self.norm(x), torch.diag_embed(self.weight), self.bias)


def _norm(kind: str, n: int, dim: int) -> nn.Module:
    return PaperSetNorm(n, dim) if kind == "set" else nn.Identity()


class PaperBlock(nn.Module):
    """Clean residual (pre-norm) block, or a plain Linear -> ReLU layer for Deep Sets."""

    def __init__(self, n: int, dim: int, norm: str, residual: str) -> None:
        super().__init__()
        self.residual = residual
        self.fc1 = nn.Linear(dim, dim)
        if residual == "clean":
            self.norm1, self.norm2 = _norm(norm, n, dim), _norm(norm, n, dim)
            self.fc2 = nn.Linear(dim, dim)

    def forward(self, x):
        if self.residual == "clean":
            h = self.fc1(F.relu(self.norm1(x)))
            return x + self.fc2(F.relu(self.norm2(h)))
        return F.relu(self.fc1(x))


class PaperDecoder(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2, self.head = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, 1)

    def forward(self, z):
        return self.head(F.relu(self.fc2(F.relu(self.fc1(z)))))


class PaperDeepSets(nn.Module):
    def __init__(self, n: int, dim: int, depth: int, norm: str, residual: str) -> None:
        super().__init__()
        self.input = nn.Linear(2, dim)
        self.blocks = nn.Sequential(*(PaperBlock(n, dim, norm, residual) for _ in range(depth)))
        self.decoder = PaperDecoder(dim)

    def forward(self, x):
        return self.decoder(self.blocks(self.input(x)).mean(1))


class PaperMAB(nn.Module):
    """Multihead attention block; heads split by ``torch.cat`` of slices (Lee et al.'s code)."""

    def __init__(self, nq: int, nk: int, dim: int, heads: int, norm: str, residual: str, learned_query: bool):
        super().__init__()
        self.heads, self.residual, self.learned_query = heads, residual, learned_query
        self.fc_q, self.fc_k, self.fc_v, self.fc_o = (nn.Linear(dim, dim) for _ in range(4))
        self.fc1 = nn.Linear(dim, dim)
        if residual == "clean":
            self.norm_q = None if learned_query else _norm(norm, nq, dim)
            self.norm_k, self.norm_h = _norm(norm, nk, dim), _norm(norm, nq, dim)
            self.fc2 = nn.Linear(dim, dim)

    def attend(self, q, k):
        split = q.shape[2] // self.heads
        q_ = torch.cat(self.fc_q(q).split(split, 2), 0)  # (h B, M, d/h)
        k_ = torch.cat(self.fc_k(k).split(split, 2), 0)
        v_ = torch.cat(self.fc_v(k).split(split, 2), 0)
        a = torch.softmax(q_.bmm(k_.transpose(1, 2)) / math.sqrt(split), 2)  # (h B, M, N)
        return self.fc_o(torch.cat(a.bmm(v_).split(q.shape[0], 0), 2))  # (B, M, D)

    def forward(self, q, k):
        if self.residual == "clean":
            qn = q if self.learned_query else self.norm_q(q)
            h = q + self.attend(qn, self.norm_k(k))
            return h + self.fc2(F.relu(self.fc1(self.norm_h(h))))
        h = q + self.attend(q, k)  # the original MAB, norm "none"
        return h + F.relu(self.fc1(h))


class PaperISAB(nn.Module):
    def __init__(self, n: int, dim: int, heads: int, inducing: int, norm: str, residual: str) -> None:
        super().__init__()
        self.points = nn.Parameter(torch.randn(1, inducing, dim) / math.sqrt(dim))
        self.mab_in = PaperMAB(inducing, n, dim, heads, norm, residual, learned_query=True)
        self.mab_out = PaperMAB(n, inducing, dim, heads, norm, residual, learned_query=False)

    def forward(self, x):
        h = self.mab_in(self.points.repeat(x.shape[0], 1, 1), x)  # (B, m, D)
        return self.mab_out(x, h)


class PaperSetTransformer(nn.Module):
    def __init__(self, n: int, dim: int, depth: int, heads: int, inducing: int, norm: str, residual: str):
        super().__init__()
        self.input = nn.Linear(2, dim)
        self.blocks = nn.Sequential(*(PaperISAB(n, dim, heads, inducing, norm, residual) for _ in range(depth)))
        self.seed = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.pma = PaperMAB(1, n, dim, heads, norm, residual, learned_query=True)
        self.decoder = PaperDecoder(dim)

    def forward(self, x):
        h = self.blocks(self.input(x))
        return self.decoder(self.pma(self.seed.repeat(x.shape[0], 1, 1), h).squeeze(1))


class PaperSlotSet(nn.Module):
    """Element encoder, then one Slot Set Encoder over the whole set at once (Bruno et al.)."""

    def __init__(self, n: int, dim: int, depth: int, slots: int) -> None:
        super().__init__()
        self.input = nn.Linear(2, dim)
        self.blocks = nn.Sequential(*(PaperBlock(n, dim, "none", "clean") for _ in range(depth)))
        self.mu = nn.Parameter(torch.randn(1, 1, dim))
        self.log_sigma = nn.Parameter(torch.zeros(1, 1, dim))
        self.slots = slots
        self.norm_slots = nn.LayerNorm(dim)
        self.fc_q, self.fc_k, self.fc_v = (nn.Linear(dim, dim) for _ in range(3))
        self.read1, self.read2 = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.decoder = PaperDecoder(dim)

    def forward(self, x):
        h = self.blocks(self.input(x))  # (B, N, D)
        s = self.mu + self.log_sigma.exp() * torch.randn(x.shape[0], self.slots, h.shape[2])
        q = self.fc_q(self.norm_slots(s))  # (B, K, D)
        a = torch.sigmoid(self.fc_k(h).bmm(q.transpose(1, 2)) / math.sqrt(h.shape[2])) + 1e-8  # (B, N, K)
        a = a / a.sum(2, keepdim=True) * self.slots
        slots = a.transpose(1, 2).bmm(self.fc_v(h)) / h.shape[1]  # (B, K, D) mean over elements
        return self.decoder(self.read2(F.gelu(self.read1(slots))).mean(1))


def paper_model(family: str, depth: int, n: int, dim: int, *, heads: int = 4, inducing: int = 32, slots: int = 32):
    """The baseline of a flowrbc family at depth ``depth`` for sets of exactly ``n`` elements."""
    if family == "deepsets":
        return PaperDeepSets(n, dim, depth, "none", "none")
    if family == "deepsets++":
        return PaperDeepSets(n, dim, depth, "set", "clean")
    if family == "set_transformer":
        return PaperSetTransformer(n, dim, depth, heads, inducing, "none", "nonclean")
    if family == "set_transformer++":
        return PaperSetTransformer(n, dim, depth, heads, inducing, "set", "clean")
    if family == "slot_set":
        return PaperSlotSet(n, dim, depth, slots)
    raise ValueError(f"family: {family!r} has no baseline")


class PerItemSets(torch.utils.data.Dataset):
    """One set per item: ``n`` cells drawn with replacement from sample i's rows, as numpy."""

    def __init__(self, cells: np.ndarray, offsets: np.ndarray, n: int, seed: int = 0) -> None:
        self.cells, self.offsets, self.n = cells, offsets, n
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int):
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.cells[lo + self.rng.integers(0, hi - lo, self.n)].astype(np.float32)  # (n, 2)
