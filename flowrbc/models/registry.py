"""Family name -> model class, and ``build_model``, the one constructor.

The registry imports every family, so it lives above them: ``config`` imports no family
and every family needs only ``ModelConfig``, which keeps the imports free of circles.
"""

from __future__ import annotations

from typing import Any

from flowrbc.models.config import ModelConfig
from flowrbc.models.deepsets import DeepSets
from flowrbc.models.heads import SetModel
from flowrbc.models.set_transformer import SetTransformer
from flowrbc.models.slot_set import SlotSetModel

MODEL_CLASSES: dict[str, type[SetModel]] = {
    "deepsets": DeepSets,
    "deepsets++": DeepSets,
    "set_transformer": SetTransformer,
    "set_transformer++": SetTransformer,
    "slot_set": SlotSetModel,
}


def build_model(config: ModelConfig | dict[str, Any]) -> SetModel:
    """Build the ``SetModel`` that ``config`` describes (a dict is read with ``from_dict``)."""
    if isinstance(config, dict):
        config = ModelConfig.from_dict(config)
    if not isinstance(config, ModelConfig):
        raise ValueError(f"config: expected ModelConfig or dict, got {type(config).__name__}")
    return MODEL_CLASSES[config.family](config)
