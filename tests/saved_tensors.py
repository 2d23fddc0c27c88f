"""What autograd keeps for backward: the tensors a forward pass saves that are as large as its
input or larger, besides the input itself (counted once per storage)."""

from __future__ import annotations

from collections.abc import Callable

import torch


def held_for_backward(forward: Callable[[torch.Tensor], torch.Tensor],
                      x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Run ``forward(x)`` -> (its output, the saved tensors of at least ``x.numel()`` elements
    other than ``x``, one per storage)."""
    storages = {}

    def pack(t):
        if t.numel() >= x.numel():
            storages[t.untyped_storage().data_ptr()] = t
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = forward(x)
    own = x.untyped_storage().data_ptr()
    return y, [t for p, t in storages.items() if p != own]
