r"""Set Transformer (Lee et al. 2019) and Set Transformer++ (Zhang et al. 2022).

Multihead attention block, queries ``Q: (B, M, D)`` attending to keys ``K: (B, N, D)``
(padded keys masked out through a boolean ``attn_mask`` broadcast as (B, 1, 1, N)):

- ``nonclean`` (original MAB):  :math:`H = g(Q + \mathrm{MH}(Q, K))`, :math:`O = g(H + \mathrm{relu}(\mathrm{Linear}(H)))`
  with ``g`` the norm (post-norm; identity for ``norm="none"``).
- ``clean`` (++):  :math:`H = Q + \mathrm{MH}(\mathrm{norm}(Q), \mathrm{norm}(K))`,
  :math:`O = H + \mathrm{rFF}(\mathrm{norm}(H))`, rFF = Linear -> relu -> Linear; learned
  queries (inducing points, PMA seeds) are not normalised, they are parameters.
- ``none``:  :math:`O = \mathrm{rFF}(\mathrm{MH}(Q, K))` with a norm after each part.

SAB(X) = MAB(X, X); ISAB(X) = MAB(X, MAB(I, X)) with ``inducing`` learned points I
(O(N m) instead of O(N^2)); PMA(Z) = MAB(S, Z) with one learned seed S.
In the clean blocks, where one side is few (the inducing points, the seed, ISAB's read-back
keys), the projections act on the few side (``MAB._learned_queries``, ``MAB._few_keys``): the
same values with fewer products, and nothing of the whole set's size kept for backward but
the softmax weights.
Encoder: ``depth`` SAB/ISAB blocks -> PMA (or sum/mean/max pooling) -> decoder -> heads.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from flowrbc.models.blocks import run_blocks
from flowrbc.models.config import ModelConfig
from flowrbc.models.heads import SetModel
from flowrbc.models.norms import (SetNorm, add_residual, linear, make_norm, matmul_dtype, norm_linear, norm_matmul,
                                  set_stats, stats_backward)
from flowrbc.models.pooling import pool


SMALL_SIDE = 64  # on CPU, attention with at most this many queries or keys runs explicitly


def explicit_attention(q: Tensor, k: Tensor, v: Tensor, attn_mask: Tensor | None) -> Tensor:
    r""":math:`\mathrm{softmax}(q k^\top / \sqrt{d})\, v` with masked keys left out (the softmax
    in float32, ``softmax``): ``q (B, h, M, d)``, ``k, v (B, h, N, d)``, ``attn_mask`` (B, 1, 1, N) True = attend
    -> (B, h, M, d). Same values as SDPA; on CPU it is the faster kernel when M or N is small
    (ISAB, PMA): SDPA's CPU kernel copies k and v contiguous and zero-fills its gradients, and
    its bf16 backward measured 2.4x slower than its float32 one."""
    s = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))  # (B, h, M, N)
    if attn_mask is not None:
        s = s.masked_fill(~attn_mask, float("-inf"))
    return torch.matmul(softmax(s).to(v.dtype), v)  # (B, h, M, d)


class _Softmax(torch.autograd.Function):
    r"""Softmax over the last dimension computed in at least float32, returned and saved in the input's
    dtype: :math:`p = \mathrm{softmax}(s)`, :math:`\partial s = p \odot (\partial p - \langle \partial p, p\rangle)`
    (in float32 from the saved ``p``). For bf16 scores autograd's ``softmax(s.float())``
    keeps a float32 copy of ``p`` beside the bf16 one the next product saves: this keeps one,
    in bf16 (as fused mixed-precision softmax kernels do). Measured on Set Transformer++ 8
    (ISAB 32, B 64, N 1,000, width 128, bf16 on a 2-thread CPU, two runs each): training peak
    memory 3.58 -> 3.0 GiB, 16.1 / 16.0 -> 16.3 / 17.3 sets/s."""

    @staticmethod
    def forward(ctx, s, dim):  # noqa: D102
        p = torch.softmax(s, dim, dtype=torch.promote_types(s.dtype, torch.float32)).to(s.dtype)
        ctx.dim = dim
        ctx.save_for_backward(p)
        return p

    @staticmethod
    @once_differentiable
    def backward(ctx, dp):  # noqa: D102
        (p,) = ctx.saved_tensors
        wide = torch.promote_types(p.dtype, torch.float32)
        ds = torch._softmax_backward_data(dp.to(wide), p.to(wide), ctx.dim, wide).to(p.dtype)  # one fused pass
        return ds, None


def softmax(s: Tensor, dim: int = -1) -> Tensor:
    """``softmax(s, dim)`` in float32, in ``s``'s dtype (``_Softmax``)."""
    return _Softmax.apply(s, dim)


def norm_mix(p: Tensor, norm: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    r"""``p^T @ norm(x)`` for weights ``p`` (B, N, M) whose columns sum to one over the real
    elements of ``x`` (B, N, D) (a softmax over them) -> (B, M, D).

    With a set norm, :math:`z = (x - \mu_b) a_b + \beta` and columns summing to one give
    :math:`p^\top z = (p^\top x - \mu_b)\,a_b + \beta`: the same values, and backward
    (``_SetNormMixFunction``) keeps ``x`` (the block's input, kept anyway) and ``p`` instead of a
    (B, N, D) ``norm(x)``.
    """
    if isinstance(norm, SetNorm) and torch.is_grad_enabled():
        return _SetNormMixFunction.apply(p, x, norm.weight, norm.bias, mask, norm.eps)
    return torch.matmul(p.transpose(1, 2), norm(x, mask))


class _SetNormMixFunction(torch.autograd.Function):
    r""":math:`g = (p^\top x - \mu_b)\,a_b + \beta`, :math:`a_b = \gamma\,r_b` (``norm_mix``):
    ``p`` (B, N, M), ``x`` (B, N, D) -> (B, M, D). Backward from ``dg``, with :math:`u = p^\top x`:
    :math:`\partial u = \partial g \odot a_b`, :math:`\partial p = x\,\partial u^\top`,
    :math:`\partial x = p\,\partial u + m \odot (x\,C + E)`, where the per-set scalars :math:`C, E`
    carry the statistics' share (``flowrbc.models.norms.stats_backward``, as in the set norm's backward)
    (:math:`\partial\mu_b = -\sum \partial u`, :math:`\partial r_b = \sum \partial g \odot (u - \mu_b)\,\gamma`).
    Autograd through the statistics ran three more (B, N, D) passes (the norm's backward)."""

    @staticmethod
    def forward(ctx, p, x, weight, bias, mask, eps):  # noqa: D102
        mean, var, count, offset = set_stats(x, mask)  # (B, 1, 1) each
        rstd = torch.rsqrt(var + eps)
        cdt = matmul_dtype(x)
        u = torch.matmul(p.to(cdt).transpose(1, 2), x.to(cdt)).to(mean.dtype) - mean  # (B, M, D), centred
        ctx.offset, ctx.cdt = offset, cdt
        ctx.save_for_backward(p, x, weight, u, mean, rstd, count, mask)
        return torch.addcmul(bias, u, rstd * weight)  # (B, M, D)

    @staticmethod
    @once_differentiable
    def backward(ctx, dg):  # noqa: D102
        p, x, weight, u, mean, rstd, count, mask = ctx.saved_tensors
        cdt, dt = ctx.cdt, x.dtype
        dg = dg.to(u.dtype)
        du = dg * (rstd * weight)  # (B, M, D)
        d_weight = (dg * u * rstd).sum((0, 1))
        d_bias = dg.sum((0, 1))
        d_mean = -du.sum((1, 2), keepdim=True)  # (B, 1, 1)
        d_rstd = (dg * u * weight).sum((1, 2), keepdim=True)  # (B, 1, 1)
        c, e = stats_backward(d_mean, d_rstd, torch.zeros_like(mean) if ctx.offset else mean, rstd, count, mask)
        d_p = torch.matmul(x.to(cdt), du.to(cdt).transpose(1, 2)).to(p.dtype)  # (B, N, M)
        dx = torch.matmul(p.to(cdt), du.to(cdt)).to(dt)  # (B, N, D)
        if ctx.offset:  # centre first: x C - mean C would cancel badly
            dx.add_((x - mean.to(dt)) * c.to(dt))
        else:
            dx.addcmul_(x, c.to(dt))
        dx.add_(e.to(dt))
        return d_p, dx, d_weight.to(weight.dtype), d_bias.to(weight.dtype), None, None


class MultiHead(nn.Module):
    """Multi-head scaled dot-product attention: the fused SDPA kernel, or on CPU with a
    small side (at most ``SMALL_SIDE`` queries or keys) ``explicit_attention``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, q: Tensor, k: Tensor, key_mask: Tensor | None) -> Tensor:
        return self.attend(self.q(q), self.kv(k), key_mask)

    def attend(self, q: Tensor, kv: Tensor, key_mask: Tensor | None) -> Tensor:
        """Projected queries ``(B, M, D)`` and keys|values ``(B, N, 2D)`` -> ``(B, M, D)``."""
        b, m, d = q.shape
        n, h = kv.shape[1], self.heads
        q = q.view(b, m, h, d // h).transpose(1, 2)  # (B, h, M, d/h)
        k, v = kv.view(b, n, 2, h, d // h).permute(2, 0, 3, 1, 4)  # 2 x (B, h, N, d/h)
        attn_mask = None if key_mask is None else key_mask.view(b, 1, 1, n)  # True = attend
        if q.device.type == "cpu" and min(m, n) <= SMALL_SIDE:
            o = explicit_attention(q, k, v, attn_mask)  # (B, h, M, d/h)
        else:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, h, M, d/h)
        return self.out(o.transpose(1, 2).reshape(b, m, d))  # (B, M, D)


class MAB(nn.Module):
    """Multihead attention block with clean, non-clean or no residual path."""

    def __init__(
        self, dim: int, heads: int, norm: str, residual: str, *, query: str = "data"
    ) -> None:
        """``query``: "data" (a set of its own), "self" (the keys: SAB) or "learned" (parameters)."""
        super().__init__()
        self.residual = residual
        self.query = query
        self.lean = False  # ModelConfig.lean: see norm_linear
        self.attn = MultiHead(dim, heads)
        # Only norms that are used exist (unused parameters would upset DDP).
        needs_norm_q = residual != "clean" or query == "data"
        self.norm_q = make_norm(norm, dim) if needs_norm_q else None
        self.norm_k = make_norm(norm, dim) if residual == "clean" else None
        self.norm_h = make_norm(norm, dim)
        self.fc1 = nn.Linear(dim, dim)
        if residual == "clean":
            self.fc2 = nn.Linear(dim, dim)

    def forward(self, q: Tensor, k: Tensor, q_mask: Tensor | None, k_mask: Tensor | None) -> Tensor:
        if self.residual == "clean":  # every norm -> linear pair through norm_linear
            if self.query == "learned" and self._few(q.shape[1], q.shape[2]):
                h = q + self._learned_queries(q, k, k_mask)  # (B, M, D)
            elif self.query == "data" and self._few(k.shape[1], q.shape[2]):
                h = add_residual(q, self._few_keys(q, k, q_mask, k_mask))  # (B, N, D)
            else:
                if self.query == "learned":
                    qp = self.attn.q(q)  # (B, M, D)
                else:  # self-attention normalises its shared input with norm_k
                    norm = self.norm_k if self.query == "self" else self.norm_q
                    qp = norm_linear(norm, self.attn.q, q, q_mask, False, self.lean)
                kv = norm_linear(self.norm_k, self.attn.kv, k, k_mask, False, self.lean)  # (B, N, 2D)
                h = q + self.attn.attend(qp, kv, k_mask)  # (B, M, D)
            r = F.relu(norm_linear(self.norm_h, self.fc1, h, q_mask, False, self.lean), inplace=True)  # (B, M, D)
            return add_residual(h, linear(r, self.fc2.weight, self.fc2.bias))
        if self.residual == "nonclean":
            h = self.norm_q(q + self.attn(q, k, k_mask), q_mask)
            return self.norm_h(h + F.relu(self.fc1(h)), q_mask)
        h = self.norm_q(self.attn(q, k, k_mask), q_mask)
        return self.norm_h(F.relu(self.fc1(h)), q_mask)

    # With few queries (learned: ISAB's inducing points, PMA's seed) or few keys (ISAB's read-back),
    # the projections on the many side's D features move onto the few side: per set the many
    # side meets one (N, D) x (D, heads * few) product for the scores and one for the mixing,
    # instead of projections of N x D x D each plus attention. Multiply-adds per set of N:
    # 2 N D heads few, against 2 N D^2 + 2 N D few; so this path runs where heads * few <= D + few
    # (ISAB 32 with 4 heads at width 128: 14 % fewer FLOPs per block). Nothing of size (N, D)
    # is kept for backward but the softmax weights; the values equal the projected path's.

    def _few(self, few: int, dim: int) -> bool:
        return self.attn.heads * few <= dim + few

    def _learned_queries(self, q: Tensor, k: Tensor, k_mask: Tensor | None) -> Tensor:
        """MH(q, norm_k(k)) for learned queries q (B, M, D), the same in every set, over keys
        k (B, N, D): scores norm_k(k) A^T with A = (q W_q^T + b_q) W_k per head (the key bias adds
        a constant per query, which cancels in the softmax); values (p^T norm_k(k)) W_v^T + b_v
        (each query's weights sum to one) -> (B, M, D)."""
        b, n, dim = k.shape
        m, h = q.shape[1], self.attn.heads
        d = dim // h
        w_k, w_v = self.attn.kv.weight.view(2, h, d, dim)  # (h, d/h, D) each
        qp = self.attn.q(q[:1]).view(m, h, d)  # (M, h, d/h): the queries of every set
        a = torch.einsum("mhe,heD->hmD", qp, w_k).reshape(h * m, dim) * (1.0 / math.sqrt(d))  # (hM, D)
        s = norm_matmul(self.norm_k, k, k_mask, a, None, False, self.lean)  # (B, N, hM)
        if k_mask is not None:
            s = s.masked_fill(~k_mask.unsqueeze(-1), float("-inf"))
        p = softmax(s, 1)  # (B, N, hM): each query's weights over the set, kept in this layout (no transposed copies)
        g = norm_mix(p, self.norm_k, k, k_mask).view(b, h, m, dim)  # (B, h, M, D)
        o = torch.einsum("bhmD,heD->bmhe", g, w_v).reshape(b, m, dim) + self.attn.kv.bias[dim:]  # (B, M, D)
        return self.attn.out(o)

    def _few_keys(self, q: Tensor, k: Tensor, q_mask: Tensor | None, k_mask: Tensor | None) -> Tensor:
        """MH(norm_q(q), norm_k(k)) for queries q (B, N, D), a set of their own, over few keys
        k (B, M, D) (ISAB's read-back): scores norm_q(q) A_b^T + c_b with A_b = k_b W_q per head,
        c_b = k_b b_q; output p C_b + b_o with C_b = v_b W_o per head -> (B, N, D)."""
        b, n, dim = q.shape
        m, h = k.shape[1], self.attn.heads
        d = dim // h
        scale = 1.0 / math.sqrt(d)
        kv = norm_linear(self.norm_k, self.attn.kv, k, k_mask, False, self.lean).view(b, m, 2, h, d)
        keys, values = kv.unbind(2)  # (B, M, h, d/h) each
        a = torch.einsum("bmhe,heD->bhmD", keys, self.attn.q.weight.view(h, d, dim)).reshape(b, h * m, dim)
        c = torch.einsum("bmhe,he->bhm", keys, self.attn.q.bias.view(h, d)).reshape(b, 1, h * m)
        s = norm_matmul(self.norm_q, q, q_mask, a * scale, c * scale, False, self.lean).view(b, n, h, m)
        if k_mask is not None:
            s = s.masked_fill(~k_mask.view(b, 1, 1, m), float("-inf"))
        p = softmax(s).view(b, n, h * m)  # (B, N, hM)
        w_o = self.attn.out.weight.view(dim, h, d)  # (D, h, d/h)
        c_out = torch.einsum("bmhe,Dhe->bhmD", values, w_o).reshape(b, h * m, dim)  # (B, hM, D)
        return torch.baddbmm(self.attn.out.bias, p, c_out)  # (B, N, D)


class SAB(nn.Module):
    """Set attention block: every element attends to every real element. O(N^2)."""

    def __init__(self, dim: int, heads: int, norm: str, residual: str) -> None:
        super().__init__()
        self.mab = MAB(dim, heads, norm, residual, query="self")

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        return self.mab(x, x, mask, mask)


class ISAB(nn.Module):
    """Induced set attention block: m learned points summarise the set, elements read back."""

    def __init__(self, dim: int, heads: int, inducing: int, norm: str, residual: str) -> None:
        super().__init__()
        self.points = nn.Parameter(torch.randn(1, inducing, dim) / math.sqrt(dim))
        self.mab_in = MAB(dim, heads, norm, residual, query="learned")
        self.mab_out = MAB(dim, heads, norm, residual)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        points = self.points.expand(x.shape[0], -1, -1)  # (B, m, D)
        h = self.mab_in(points, x, None, mask)  # (B, m, D)
        return self.mab_out(x, h, mask, None)  # (B, N, D)


class PMA(nn.Module):
    """Pooling by multihead attention with one learned seed: (B, N, D) -> (B, D)."""

    def __init__(self, dim: int, heads: int, norm: str, residual: str) -> None:
        super().__init__()
        self.seed = nn.Parameter(torch.randn(1, 1, dim) / math.sqrt(dim))
        self.mab = MAB(dim, heads, norm, residual, query="learned")

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        seed = self.seed.expand(x.shape[0], -1, -1)  # (B, 1, D)
        return self.mab(seed, x, None, mask).squeeze(1)


class SetTransformer(SetModel):
    """Set Transformer / ++: input linear -> SAB/ISAB blocks -> PMA -> decoder -> heads."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, embed_dim=config.width)
        d, c = config.width, config
        self.input = nn.Linear(c.in_features, d)
        if c.inducing:
            blocks = (ISAB(d, c.heads, c.inducing, c.norm, c.residual) for _ in range(c.depth))
        else:
            blocks = (SAB(d, c.heads, c.norm, c.residual) for _ in range(c.depth))
        self.blocks = nn.ModuleList(blocks)
        self.pma = PMA(d, c.heads, c.norm, c.residual) if c.pooling == "pma" else None
        for module in self.modules():  # every attention block (inside SAB, ISAB, PMA)
            if isinstance(module, MAB):
                module.lean = c.lean

    def _embed(self, x: Tensor, mask: Tensor | None) -> Tensor:
        h = self.input(x)  # (B, N, D)
        recompute = self.config.checkpoint and self.training and h.requires_grad
        h = run_blocks(self.blocks, h, mask, recompute)
        if self.pma is not None:
            return self.pma(h, mask)  # (B, D)
        return pool(h, mask, self.config.pooling)
