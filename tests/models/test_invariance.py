"""Permutation and padding invariance of every family and norm; the input checks."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from flowrbc.models import ModelConfig, build_model

CONFIGS = [
    dict(family="deepsets"),
    dict(family="deepsets", residual="nonclean", norm="layer"),
    dict(family="deepsets", norm="feature", pooling="sum"),
    dict(family="deepsets++"),
    dict(family="deepsets++", norm="feature", pooling="max"),
    dict(family="deepsets++", norm="layer", residual="nonclean"),
    dict(family="deepsets", equivariant="max"),
    dict(family="set_transformer"),
    dict(family="set_transformer", norm="layer"),
    dict(family="set_transformer", residual="none", norm="feature"),
    dict(family="set_transformer++"),
    dict(family="set_transformer++", inducing=3),
    dict(family="set_transformer++", norm="feature", pooling="mean"),
    dict(family="set_transformer++", norm="layer", inducing=2, pooling="max"),
    dict(family="slot_set"),
    dict(family="slot_set", norm="layer", slot_agg="max", slots2=2),
    dict(family="slot_set", slot_init="deterministic", slot_readout="flatten", slot_agg="min"),
    dict(family="slot_set", slot_agg="sum", residual="nonclean"),
]
IDS = ["-".join(str(v) for v in c.values()) for c in CONFIGS]


def _model(kwargs, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(width=8, heads=2, slots=4, outputs={"y": 2}, **kwargs)
    return build_model(config).double().eval()


@pytest.mark.parametrize("kwargs", CONFIGS, ids=IDS)
def test_permutation_invariance(kwargs):
    model = _model(kwargs)
    x = torch.randn(3, 9, 2, dtype=torch.float64)
    perm = torch.randperm(9)
    torch.testing.assert_close(model(x[:, perm])["y"], model(x)["y"], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(model.embed(x[:, perm]), model.embed(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kwargs", CONFIGS, ids=IDS)
def test_padding_invariance(kwargs):
    model = _model(kwargs)
    sizes = [1, 4, 7]
    sets = [torch.randn(n, 2, dtype=torch.float64) for n in sizes]
    width = 10
    x = torch.full((3, width, 2), 1e4, dtype=torch.float64)  # padding values are large on purpose
    mask = torch.zeros(3, width, dtype=torch.bool)
    for b, s in enumerate(sets):
        pos = torch.randperm(width)[: len(s)]  # padding interleaved, not only at the end
        x[b, pos], mask[b, pos] = s, True
    batched = model(x, mask)["y"]
    for b, s in enumerate(sets):
        alone = model(s.unsqueeze(0))["y"]
        torch.testing.assert_close(batched[b : b + 1], alone, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kwargs", [c for c in CONFIGS if c["family"] != "slot_set"], ids=str)
def test_padding_invariance_in_training_mode(kwargs):
    # set and feature norms use masked statistics in training too (slot_set samples slots)
    model = _model(kwargs).train()
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    xp = torch.cat([x, torch.full((2, 3, 2), -50.0, dtype=torch.float64)], 1)
    mask = torch.arange(8).expand(2, 8) < 5
    torch.testing.assert_close(model(xp, mask)["y"], model(x)["y"], rtol=1e-9, atol=1e-9)


@settings(max_examples=15, deadline=None)
@given(
    n=st.integers(1, 12),
    extra=st.integers(0, 6),
    config=st.sampled_from(range(len(CONFIGS))),
    seed=st.integers(0, 2**16),
)
def test_hypothesis_permutation_with_padding(n, extra, config, seed):
    torch.manual_seed(seed)
    model = _model(CONFIGS[config], seed)
    x = torch.randn(1, n + extra, 2, dtype=torch.float64)
    mask = torch.zeros(1, n + extra, dtype=torch.bool)
    mask[0, torch.randperm(n + extra)[:n]] = True
    perm = torch.randperm(n + extra)
    ref = model(x[:, mask[0]])["y"]
    torch.testing.assert_close(model(x[:, perm], mask[:, perm])["y"], ref, rtol=1e-9, atol=1e-9)


def test_nan_padding_does_not_leak():
    model = _model(dict(family="set_transformer++"))
    x = torch.randn(1, 4, 2, dtype=torch.float64)
    xp = torch.cat([x, torch.full((1, 2, 2), float("nan"), dtype=torch.float64)], 1)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    torch.testing.assert_close(model(xp, mask)["y"], model(x)["y"])


def test_single_element_sets_are_fine():
    for kwargs in CONFIGS:
        out = _model(kwargs)(torch.randn(2, 1, 2, dtype=torch.float64))["y"]
        assert out.shape == (2, 2) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    ("x", "mask", "match"),
    [
        (torch.randn(5, 2), None, r"^x: expected shape \(B, N, C\)"),
        (torch.randn(2, 5, 3), None, "^x: expected 2 features"),
        (torch.randint(0, 3, (2, 5, 2)), None, "^x: expected a floating point"),
        (torch.randn(2, 0, 2), None, "^x: needs at least one"),
        (torch.randn(2, 5, 2), torch.ones(2, 4, dtype=torch.bool), "^mask: shape"),
        (torch.randn(2, 5, 2), torch.ones(2, 5), "^mask: expected a bool"),
        (torch.randn(2, 5, 2), torch.tensor([[True] * 5, [False] * 5]), r"^mask: set\(s\) \[1\]"),
    ],
)
def test_bad_inputs_name_the_argument(x, mask, match):
    for family in ("deepsets++", "set_transformer++", "slot_set"):
        model = build_model(ModelConfig(family=family, width=8, heads=2, slots=3))
        with pytest.raises(ValueError, match=match):
            model(x, mask)
        with pytest.raises(ValueError, match=match):
            model.embed(x, mask)
