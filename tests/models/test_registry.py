"""The registry: one class per family, and the layering that keeps ``flowrbc.models`` free of circles."""

import ast
from pathlib import Path

import pytest

import flowrbc.models
from flowrbc.models import FAMILIES, ModelConfig, build_model
from flowrbc.models.registry import MODEL_CLASSES

MODELS_DIR = Path(flowrbc.models.__file__).parent
LAYER_ABOVE = ("__init__", "registry")  # the modules that import the families
FAMILY_MODULES = {"flowrbc.models.deepsets", "flowrbc.models.set_transformer", "flowrbc.models.slot_set"}


def _package_imports(name: str) -> set[str]:
    """``flowrbc.*`` modules named by the import statements of ``flowrbc/models/<name>.py``."""
    tree = ast.parse((MODELS_DIR / f"{name}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return {module for module in found if module.startswith("flowrbc")}


def test_every_family_has_a_model_class():
    assert set(MODEL_CLASSES) == set(FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_build_model_gives_the_registered_class(family):
    config = ModelConfig(family=family, width=8, heads=2, slots=3)
    assert type(build_model(config)) is MODEL_CLASSES[family]
    assert type(build_model(config.to_dict())) is MODEL_CLASSES[family]


def test_build_model_rejects_other_types():
    with pytest.raises(ValueError, match="config: expected ModelConfig or dict"):
        build_model("deepsets")


@pytest.mark.parametrize("name", sorted(p.stem for p in MODELS_DIR.glob("*.py") if p.stem not in LAYER_ABOVE))
def test_only_the_registry_and_package_import_the_families(name):
    own = {f"flowrbc.models.{name}"}
    assert not (_package_imports(name) & (FAMILY_MODULES - own))
    assert "flowrbc.models" not in _package_imports(name)  # the package would import it back
