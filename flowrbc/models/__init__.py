"""Permutation-invariant set models: Deep Sets(++), Set Transformer(++), Slot Set Encoder.

``build_model(ModelConfig(...))`` gives a ``SetModel``: ``model(x, mask=None)`` maps sets
``x: (B, N, C)`` (``mask: (B, N)`` bool, True = real element) to ``{head: (B, out)}`` and
``model.embed(x, mask)`` to the pooled set embedding ``(B, D)``.
"""

from flowrbc.models.blocks import ElementBlock, ElementEncoder
from flowrbc.models.config import FAMILIES, ModelConfig
from flowrbc.models.deepsets import DeepSets
from flowrbc.models.heads import Decoder, SetModel
from flowrbc.models.norms import FeatureNorm, LayerNorm, NoNorm, SetNorm, make_norm
from flowrbc.models.pooling import check_set, masked_max, masked_mean, masked_min, masked_sum, pool
from flowrbc.models.registry import build_model
from flowrbc.models.set_transformer import ISAB, MAB, PMA, SAB, MultiHead, SetTransformer
from flowrbc.models.slot_set import SlotReadout, SlotSetEncoder, SlotSetModel

__all__ = [
    "FAMILIES", "ModelConfig", "build_model", "SetModel", "Decoder",
    "DeepSets", "ElementBlock", "ElementEncoder",
    "SetTransformer", "MultiHead", "MAB", "SAB", "ISAB", "PMA",
    "SlotSetEncoder", "SlotSetModel", "SlotReadout",
    "SetNorm", "LayerNorm", "FeatureNorm", "NoNorm", "make_norm",
    "check_set", "pool", "masked_sum", "masked_mean", "masked_max", "masked_min",
]
