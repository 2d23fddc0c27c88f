r"""Masked normalisation layers for sets ``x: (B, N, D)`` with ``mask: (B, N)`` (True = real).

All of them accept any set size and ignore padded elements, so padding never changes a
real element's output. The scale is applied elementwise as ``y = x * a + b`` with
``a, b: (B, 1, D)`` (one fused ``addcmul``): no diagonal matrix, no D x D product, and
autograd keeps only ``x`` and the small statistics for backward.

- set norm (Zhang et al. 2022): one mean and variance per set over all real elements
  *and* features, then a per-feature affine,
  :math:`\mu_b = \frac{1}{n_b D}\sum_{i,d} x_{bid}`, :math:`y = \gamma \frac{x-\mu_b}{\sigma_b} + \beta`.
- layer norm: per element over features (forces invariance to each element's scale).
- feature norm: batch norm per feature over all real elements of the batch, running
  averages in eval mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable


_CANCEL_RATIO = 100.0  # mean^2 / var above which E[x^2] - mean^2 loses > ~1e-4 (float32)


def _stats_dtype(x: Tensor) -> Tensor:
    """``x`` in at least float32: statistics of bf16/fp16 activations (autocast) in float32."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def moments(x: Tensor, dims: tuple[int, ...], keepdim: bool = True) -> tuple[Tensor, Tensor, bool]:
    r"""Mean and (biased) variance over ``dims``, and whether the mean dominates the spread.

    On CPU, ``torch.var_mean`` (Welford) runs ~20x slower than two plain reductions, so the
    variance is :math:`\overline{x^2} - \bar x^2` from ``sum`` and ``vector_norm`` (no
    temporary tensor, one cheap elementwise op in backward). That formula loses precision
    when :math:`\bar x^2 \gg \mathrm{var}`: then (rare: checked per call) the stable
    kernel is used. Other devices use ``var_mean``, which is bandwidth-bound there (and
    report True, so that the affine step centres first without a host sync).
    """
    if x.device.type != "cpu":
        var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=keepdim)
        return mean, var, True
    n = math.prod(x.shape[d] for d in dims)
    mean = x.sum(dims, keepdim=keepdim) / n
    sq = torch.linalg.vector_norm(x, 2, dims, keepdim=keepdim).square() / n
    var = (sq - mean.square()).clamp_min(0.0)
    offset = bool((mean.square() > _CANCEL_RATIO * var).any())
    if offset:
        var, mean = torch.var_mean(x, dim=dims, correction=0, keepdim=keepdim)
    return mean, var, offset


def _affine(
    x: Tensor, mean: Tensor, var: Tensor, weight: Tensor, bias: Tensor, eps: float, centre: bool = False
) -> Tensor:
    """``(x - mean) / sqrt(var + eps) * weight + bias``; stats broadcast over N.

    One addcmul ``x * a + b`` unless ``centre``: when the mean dominates the spread,
    ``x * a`` and ``b`` nearly cancel, so subtract the mean first (one more pass).
    """
    a = (torch.rsqrt(var + eps) * weight).to(x.dtype)  # (B or 1, 1, D)
    if centre:
        x, b = x - mean.to(x.dtype), bias.to(x.dtype)
    else:
        b = (bias - mean * a).to(x.dtype)
    if torch.is_grad_enabled() and (x.requires_grad or a.requires_grad or b.requires_grad):
        return torch.addcmul(b, x, a)
    # A preallocated output keeps x's memory order; addcmul with a broadcast first
    # argument otherwise iterates in b's order (measured 4x slower on CPU).
    return torch.addcmul(b, x, a, out=torch.empty_like(x))


class _SetNormFunction(torch.autograd.Function):
    r"""Set norm with a hand-written backward.

    Forward :math:`y = x a + b`, :math:`a = \gamma\,r_b`, :math:`b = \beta - \mu_b a`,
    :math:`r_b = (\sigma_b^2 + \epsilon)^{-1/2}`, moments over the M = n_b D real entries.
    Backward, from the per-set sums :math:`S_1 = \sum_n \partial y`,
    :math:`S_2 = \sum_n \partial y \odot x` (only ``x`` and (B, 1, 1) statistics are saved):
    :math:`\partial x = \partial y\, a + m \odot (x\, C + E)` with per-set scalars
    :math:`C = 2\,\partial\sigma^2 / M`, :math:`E = (\partial\mu - 2\mu\,\partial\sigma^2)/M`.
    Autograd's version of the same forward runs the broadcast reductions of ``addcmul``
    and ``vector_norm`` backward and took ~3x longer on CPU.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, mask, eps):  # noqa: D102
        xs = _stats_dtype(x)
        if mask is None:
            mean, var, offset = moments(xs, (1, 2))  # (B, 1, 1)
            count = torch.full_like(mean, xs.shape[1] * xs.shape[2])
        else:
            n_real = mask.sum(1).to(xs.dtype).view(-1, 1, 1)  # (B, 1, 1)
            col = torch.bmm(mask.unsqueeze(1).to(xs.dtype), xs)  # (B, 1, D) masked sums
            count = n_real * xs.shape[2]
            mean = col.sum(-1, keepdim=True) / count  # (B, 1, 1)
            # Padded entries set to the mean add nothing to the squared deviations, so the
            # variance over all N elements rescales to the variance over the real ones.
            filled = torch.where(mask.unsqueeze(-1), xs, mean)  # (B, N, D)
            _, var_all, offset = moments(filled, (1, 2))
            var = var_all * (xs.shape[1] / n_real)
        rstd = torch.rsqrt(var + eps)  # (B, 1, 1)
        ctx.offset = offset
        ctx.save_for_backward(x, weight, mean, rstd, count, mask)
        return _affine(x, mean, var, weight, bias, eps, offset)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy):  # noqa: D102
        x, weight, mean, rstd, count, mask = ctx.saved_tensors
        dt = x.dtype
        if ctx.offset:  # centre first: the sums below would cancel badly
            x, mu = x - mean.to(dt), torch.zeros_like(mean)
        else:
            mu = mean
        buf = torch.empty_like(x)  # one (B, N, D) buffer: the product below, then dx
        s1 = dy.sum(1, keepdim=True).to(rstd.dtype)  # (B, 1, D)
        s2 = torch.mul(dy, x, out=buf).sum(1, keepdim=True).to(rstd.dtype)  # (B, 1, D)
        centred = s2 - mu * s1  # sum over n of dy * (x - mu)
        a = rstd * weight  # (B, 1, D)
        d_weight = (rstd * centred).sum((0, 1))
        d_bias = s1.sum((0, 1))
        d_rstd = (centred * weight).sum(-1, keepdim=True)  # (B, 1, 1)
        d_mean = -(a * s1).sum(-1, keepdim=True)
        d_var = -0.5 * rstd.pow(3) * d_rstd
        c = 2.0 * d_var / count
        e = d_mean / count - mu * c
        if mask is not None:
            m = mask.unsqueeze(-1).to(c.dtype)  # (B, N, 1)
            c, e = c * m, e * m
        dx = torch.addcmul(e.to(dt), x, c.to(dt), out=buf)  # (B, N, D)
        dx.addcmul_(dy, a.to(dt))
        return dx, d_weight.to(weight.dtype), d_bias.to(weight.dtype), None, None


class SetNorm(nn.Module):
    """Standardise each set over its real elements and all features; per-feature affine."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return _SetNormFunction.apply(x, self.weight, self.bias, mask, self.eps)


class LayerNorm(nn.Module):
    """Per-element layer norm over features; padding cannot interact with real elements."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return self.norm(x)


class FeatureNorm(nn.Module):
    """Batch norm per feature over all real elements of the batch (running stats in eval)."""

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if not self.training:
            mean, var = self.running_mean, self.running_var
            offset = bool((mean.square() > _CANCEL_RATIO * var).any())
            return _affine(x, mean, var, self.weight, self.bias, self.eps, offset)
        xs = _stats_dtype(x)
        if mask is None:
            mean, var, offset = moments(xs, (0, 1), keepdim=False)  # (D,)
            count = xs.shape[0] * xs.shape[1]
        else:
            m = mask.to(xs.dtype).reshape(1, -1)  # (1, B*N)
            flat = xs.reshape(-1, xs.shape[-1])  # (B*N, D)
            count = mask.sum().to(xs.dtype)
            mean = (m @ flat).squeeze(0) / count  # (D,)
            filled = torch.where(mask.reshape(-1, 1), flat, mean)
            _, var_all, offset = moments(filled, (0,), keepdim=False)
            var = var_all * (flat.shape[0] / count)
        with torch.no_grad():
            unbiased = var * (count / max(float(count) - 1.0, 1.0))
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), self.momentum)
        return _affine(x, mean, var, self.weight, self.bias, self.eps, offset)


class NoNorm(nn.Module):
    """Identity (returns its input object, so callers know no new tensor was made)."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return x


def make_norm(kind: str, dim: int) -> nn.Module:
    """``kind`` in {"none", "layer", "feature", "set"}; every norm is called ``norm(x, mask)``."""
    if kind == "set":
        return SetNorm(dim)
    if kind == "layer":
        return LayerNorm(dim)
    if kind == "feature":
        return FeatureNorm(dim)
    if kind == "none":
        return NoNorm()
    raise ValueError(f"norm: {kind!r} is not one of none, layer, feature, set")


def norm_act(norm: nn.Module, x: Tensor, mask: Tensor | None) -> Tensor:
    """``relu(norm(x))``, in place when the norm made a fresh tensor (saves one (B, N, D))."""
    h = norm(x, mask)
    return F.relu(h, inplace=h is not x)
