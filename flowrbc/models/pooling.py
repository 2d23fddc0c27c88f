"""Masked pooling over the set axis and the input checks every model shares.

``x: (B, N, D)``, ``mask: (B, N)`` bool with True for real elements or ``None`` for full
sets. Sums use a batched matrix product with the mask, so no masked copy of ``x`` is made.
"""

from __future__ import annotations

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor | None) -> Tensor:
    """Sum over real elements: (B, N, D) -> (B, D)."""
    if mask is None:
        return x.sum(1)
    return torch.bmm(mask.unsqueeze(1).to(x.dtype), x).squeeze(1)


def masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over real elements: (B, N, D) -> (B, D)."""
    if mask is None:
        return x.mean(1)
    count = mask.sum(1, keepdim=True).to(x.dtype)  # (B, 1)
    return masked_sum(x, mask) / count


def masked_max(x: Tensor, mask: Tensor | None) -> Tensor:
    """Elementwise maximum over real elements: (B, N, D) -> (B, D)."""
    if mask is None:
        return x.amax(1)
    return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


def masked_min(x: Tensor, mask: Tensor | None) -> Tensor:
    """Elementwise minimum over real elements: (B, N, D) -> (B, D)."""
    if mask is None:
        return x.amin(1)
    return x.masked_fill(~mask.unsqueeze(-1), float("inf")).amin(1)


POOL = {"sum": masked_sum, "mean": masked_mean, "max": masked_max, "min": masked_min}


def pool(x: Tensor, mask: Tensor | None, kind: str) -> Tensor:
    """Masked ``kind`` pooling in {"sum", "mean", "max", "min"}: (B, N, D) -> (B, D)."""
    try:
        return POOL[kind](x, mask)
    except KeyError:
        raise ValueError(f"pooling: {kind!r} is not one of {', '.join(POOL)}") from None


def check_set(
    x: Tensor, mask: Tensor | None, in_features: int, *, allow_empty: bool = False
) -> tuple[Tensor, Tensor | None]:
    """Validate a batch of sets; return ``(x, mask)`` with ``mask=None`` when nothing is padded.

    Raises ValueError naming the argument: ``x`` not (B, N, C) float with C = ``in_features``
    and N >= 1; ``mask`` not a bool (B, N) tensor; a set with no real element (unless
    ``allow_empty``, used for streaming chunks, where a set may miss one chunk).
    Padded entries of ``x`` are zeroed so that NaN/inf padding cannot leak into sums.
    """
    if not isinstance(x, Tensor):
        raise ValueError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 3:
        raise ValueError(f"x: expected shape (B, N, C), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"x: expected a floating point tensor, got {x.dtype}")
    if x.shape[2] != in_features:
        raise ValueError(f"x: expected {in_features} features per element, got {x.shape[2]}")
    if x.shape[1] < 1 or x.shape[0] < 1:
        raise ValueError(f"x: needs at least one set and one element, got {tuple(x.shape)}")
    if mask is None:
        return x, None
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a bool tensor (True = real element), got {got}")
    if mask.shape != x.shape[:2]:
        raise ValueError(f"mask: shape {tuple(mask.shape)} does not match x's (B, N) = {tuple(x.shape[:2])}")
    if mask.device != x.device:
        raise ValueError(f"mask: on {mask.device}, x on {x.device}")
    lo, hi = torch.aminmax(mask.sum(1))
    lo, hi = int(lo), int(hi)  # one host sync for both checks
    if lo == 0 and not allow_empty:
        empty = torch.nonzero(mask.sum(1) == 0).flatten().tolist()[:10]
        raise ValueError(f"mask: set(s) {empty} have no real elements")
    if lo == x.shape[1]:
        return x, None  # nothing padded: take the fast path
    return x.masked_fill(~mask.unsqueeze(-1), 0.0), mask
