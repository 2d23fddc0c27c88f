"""Model configuration: ``ModelConfig`` and the allowed value of each option.

A ``ModelConfig`` is stored inside every checkpoint as a plain dict (``to_dict``), so a
checkpoint rebuilds its model alone and loads with ``torch.load(weights_only=True)``.
Fields left as ``None`` take the family's default in ``__post_init__``, so the stored
dict always carries concrete values.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

FAMILIES = ("deepsets", "deepsets++", "set_transformer", "set_transformer++", "slot_set")
NORMS = ("none", "layer", "feature", "set")
RESIDUALS = ("clean", "nonclean", "none")
POOLINGS = ("sum", "mean", "max", "pma")
EQUIVARIANT = ("none", "mean", "max")
SLOT_INITS = ("random", "deterministic")
SLOT_AGGS = ("sum", "mean", "max", "min")
SLOT_READOUTS = ("mlp", "flatten", "sum")

# family -> (depth, norm, residual, pooling)
_FAMILY_DEFAULTS = {
    "deepsets": (3, "none", "none", "mean"),  # Zaheer et al.: plain per-element layers
    "deepsets++": (3, "set", "clean", "mean"),  # Zhang et al.: set norm + clean path
    "set_transformer": (2, "none", "nonclean", "pma"),  # Lee et al.: post-add residual, PMA
    "set_transformer++": (2, "set", "clean", "pma"),  # Zhang et al.: set norm + clean path
    "slot_set": (2, "none", "clean", "mean"),  # per-element encoder before the SSE
}


@dataclass
class ModelConfig:
    """Every choice that shapes a set model; ``build_model`` (``flowrbc.models.registry``) builds it."""

    family: str = "deepsets++"  # the papers' stable deep family; any depth works
    in_features: int = 2  # per-cell features: volume, hemoglobin content
    depth: int | None = None  # encoder blocks; None: 3 (deepsets/++), 2 (set_transformer/++, slot_set)
    width: int = 128  # hidden size D of the papers' hematocrit models
    norm: str | None = None  # None: family default ("set" for ++, "none" otherwise)
    residual: str | None = None  # None: family default ("clean" for ++)
    pooling: str | None = None  # None: "mean" (output independent of event count) or "pma" for attention
    heads: int = 4  # attention heads, as in the Set Transformer experiments
    inducing: int | None = None  # ISAB inducing points; None: 32 for the set_transformer families
    # (the papers' code builds every encoder block as ISAB 32, 4 heads: cost linear in N);
    # 0 = full self-attention (SAB, O(N^2))
    slots: int = 32  # K slots of the Slot Set Encoder (MBC paper, MNIST centroid model)
    slots2: int = 0  # slots of a second, hierarchical SSE stage; 0 = single stage
    slot_init: str = "random"  # learned mu, sigma (paper default); "deterministic" learns K x h slots
    slot_agg: str = "mean"  # g across elements/chunks; mean keeps the scale independent of N
    slot_readout: str = "mlp"  # per-slot MLP then mean over slots; "sum" is the collapsing trap
    equivariant: str = "none"  # "mean"/"max": original Deep Sets layer x - pool(x) (not MBC)
    outputs: dict[str, int] = field(default_factory=lambda: {"hematocrit": 1})  # head -> dims
    covariates: int = 0  # per-set covariates (sex, age, ...) concatenated to the embedding
    decoder_depth: int = 2  # hidden layers of the decoder MLP, as in the reference decoders
    checkpoint: bool = False  # recompute encoder blocks in backward: less memory, more time
    # (with norm="feature" the recomputation updates running statistics a second time)
    lean: bool = False  # set norm + linear as one node that keeps only its input for backward:
    # Deep Sets++ 50 at B 64, N 1,000 trains in 4.9 instead of 9.3 GiB, ~20-30 % slower on CPU

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"family: {self.family!r} is not one of {', '.join(FAMILIES)}")
        depth, norm, residual, pooling = _FAMILY_DEFAULTS[self.family]
        self.depth = depth if self.depth is None else self.depth
        self.norm = norm if self.norm is None else self.norm
        self.residual = residual if self.residual is None else self.residual
        self.pooling = pooling if self.pooling is None else self.pooling
        if self.inducing is None:
            self.inducing = 32 if self.family.startswith("set_transformer") else 0
        if not isinstance(self.outputs, dict):
            raise ValueError(f"outputs: expected a dict of head name -> dims, got {self.outputs!r}")
        self.outputs = dict(self.outputs)  # a copy: the caller's dict stays theirs
        self._validate()

    def _validate(self) -> None:
        choices = {
            "norm": NORMS,
            "residual": RESIDUALS,
            "pooling": POOLINGS,
            "equivariant": EQUIVARIANT,
            "slot_init": SLOT_INITS,
            "slot_agg": SLOT_AGGS,
            "slot_readout": SLOT_READOUTS,
        }
        for name, allowed in choices.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        positive = ("in_features", "width", "heads", "slots")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}: must be a positive integer, got {value!r}")
        for name in ("depth", "inducing", "slots2", "decoder_depth", "covariates"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name}: must be a non-negative integer, got {value!r}")
        attention = self.family.startswith("set_transformer")
        if attention and self.width % self.heads:
            raise ValueError(f"heads: width {self.width} is not divisible by {self.heads} heads")
        if self.pooling == "pma" and not attention:
            raise ValueError("pooling: 'pma' needs family set_transformer or set_transformer++")
        if self.equivariant != "none" and not self.family.startswith("deepsets"):
            raise ValueError("equivariant: only the deepsets families have an equivariant layer")
        if self.family == "slot_set" and self.norm in ("set", "feature"):
            raise ValueError(
                f"norm: {self.norm!r} depends on the other elements of the set or batch and would "
                "break mini-batch consistency of slot_set; use 'none' or 'layer'"
            )
        if self.slot_readout == "flatten" and self.slot_init != "deterministic":
            raise ValueError("slot_readout: 'flatten' needs slot_init='deterministic' (ordered slots)")
        for name, dims in self.outputs.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"outputs: head names must be non-empty strings, got {name!r}")
            if not isinstance(dims, int) or isinstance(dims, bool) or dims < 1:
                raise ValueError(f"outputs: head {name!r} needs a positive integer size, got {dims!r}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (str, int, bool, dict) for checkpoints."""
        out = dataclasses.asdict(self)
        out["outputs"] = dict(self.outputs)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        """Inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        if not isinstance(data, dict):
            raise ValueError(f"config: expected a dict, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config: unknown field(s) {', '.join(unknown)}")
        return cls(**data)
