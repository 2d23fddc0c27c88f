"""ModelConfig: defaults, validation, dict round trip; build_model: counts, repr, heads."""

import json

import pytest
import torch

from flowrbc.models import FAMILIES, ModelConfig, build_model


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_through_json(family):
    config = ModelConfig(family=family, width=8, heads=2, outputs={"hematocrit": 1, "anemia": 1})
    data = json.loads(json.dumps(config.to_dict()))  # plain types only
    again = ModelConfig.from_dict(data)
    assert again == config
    assert again.to_dict() == config.to_dict()


def test_checkpoint_dict_loads_with_weights_only(tmp_path):
    config = ModelConfig(family="slot_set", width=8, slots=3, slots2=2)
    model = build_model(config)
    path = tmp_path / "m.pt"
    torch.save({"config": config.to_dict(), "state": model.state_dict()}, path)
    loaded = torch.load(path, weights_only=True)
    rebuilt = build_model(loaded["config"])
    rebuilt.load_state_dict(loaded["state"])
    x = torch.randn(2, 5, 2)
    model.eval(), rebuilt.eval()
    torch.testing.assert_close(model(x)["hematocrit"], rebuilt(x)["hematocrit"], rtol=0, atol=0)


def test_family_defaults_are_concrete():
    plus = ModelConfig(family="deepsets++")
    assert (plus.depth, plus.norm, plus.residual, plus.pooling) == (3, "set", "clean", "mean")
    plain = ModelConfig(family="deepsets")
    assert (plain.norm, plain.residual) == ("none", "none")
    st = ModelConfig(family="set_transformer++")
    assert (st.depth, st.norm, st.residual, st.pooling) == (2, "set", "clean", "pma")
    assert ModelConfig(family="set_transformer").residual == "nonclean"
    assert ModelConfig(family="deepsets++", depth=50).depth == 50


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"family": "resnet"}, "family"),
        ({"norm": "batch"}, "norm"),
        ({"residual": "skip"}, "residual"),
        ({"pooling": "median"}, "pooling"),
        ({"width": 0}, "width"),
        ({"depth": -1}, "depth"),
        ({"in_features": 2.5}, "in_features"),
        ({"family": "set_transformer", "width": 10, "heads": 4}, "heads"),
        ({"family": "deepsets", "pooling": "pma"}, "pooling"),
        ({"family": "slot_set", "norm": "set"}, "norm"),
        ({"family": "slot_set", "norm": "feature"}, "norm"),
        ({"family": "slot_set", "slot_agg": "median"}, "slot_agg"),
        ({"family": "slot_set", "slot_readout": "flatten"}, "slot_readout"),
        ({"family": "set_transformer", "equivariant": "mean"}, "equivariant"),
        ({"outputs": {"hematocrit": 0}}, "outputs"),
        ({"outputs": ["hematocrit"]}, "outputs"),
    ],
)
def test_invalid_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}:"):
        ModelConfig(**kwargs)


def test_from_dict_rejects_unknown_fields():
    data = ModelConfig().to_dict()
    data["dropout"] = 0.1
    with pytest.raises(ValueError, match="dropout"):
        ModelConfig.from_dict(data)


def _linear(i, o):
    return i * o + o


def test_parameter_count_deepsets_by_hand():
    config = ModelConfig(
        family="deepsets", in_features=2, width=4, depth=1, decoder_depth=1, outputs={"a": 1, "b": 3}
    )
    expected = _linear(2, 4) + _linear(4, 4) + _linear(4, 4) + _linear(4, 1) + _linear(4, 3)
    assert sum(p.numel() for p in build_model(config).parameters()) == expected == 72


def test_parameter_count_deepsets_plus_by_hand():
    # input, one clean block (two linears, two set norms of 2*D), decoder 0, one head
    config = ModelConfig(family="deepsets++", width=4, depth=1, decoder_depth=0, outputs={"a": 1})
    expected = _linear(2, 4) + 2 * (_linear(4, 4) + 2 * 4) + _linear(4, 1)
    assert sum(p.numel() for p in build_model(config).parameters()) == expected


def test_set_transformer_families_default_to_the_papers_isab():
    for family in ("set_transformer", "set_transformer++"):
        config = ModelConfig(family=family)
        assert (config.inducing, config.heads) == (32, 4)
        assert ModelConfig.from_dict(config.to_dict()).inducing == 32
    assert ModelConfig(family="deepsets++").inducing == 0
    assert ModelConfig.from_dict(dict(ModelConfig(family="set_transformer").to_dict(), inducing=0)).inducing == 0


def test_parameter_count_set_transformer_by_hand():
    d = 4
    config = ModelConfig(
        family="set_transformer", width=d, heads=2, depth=1, decoder_depth=0, outputs={"a": 1}, inducing=0
    )
    attention = _linear(d, d) + _linear(d, 2 * d) + _linear(d, d)  # q, kv, out
    mab = attention + _linear(d, d)  # non-clean rFF: one linear; no norm
    expected = _linear(2, d) + mab + (mab + d) + _linear(d, 1)  # SAB, PMA (+ seed)
    assert sum(p.numel() for p in build_model(config).parameters()) == expected


def test_parameter_count_slot_set_by_hand():
    d, k = 4, 3
    config = ModelConfig(
        family="slot_set", width=d, depth=0, slots=k, decoder_depth=0, outputs={"a": 1}
    )
    sse = 2 * d + 3 * _linear(d, d) + 2 * d  # LayerNorm(h), q, k, v, mu, log_sigma
    readout = 2 * _linear(d, d)
    expected = _linear(2, d) + sse + readout + _linear(d, 1)
    assert sum(p.numel() for p in build_model(config).parameters()) == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_repr_names_family_and_heads(family):
    model = build_model(ModelConfig(family=family, width=8, heads=2, slots=3))
    assert f"family={family}" in repr(model)
    out = model(torch.randn(2, 6, 2))
    assert set(out) == {"hematocrit"} and out["hematocrit"].shape == (2, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_embedding_only_model(family):
    model = build_model(ModelConfig(family=family, width=8, heads=2, slots=3, outputs={}))
    x = torch.randn(3, 5, 2)
    assert model(x) == {}
    assert model.embed(x).shape == (3, model.embed_dim)
    # no decoder parameters exist, so no parameter is unused in training
    assert not any(name.startswith("decoder") for name, _ in model.named_parameters())


def test_several_heads_share_one_encoder():
    model = build_model(ModelConfig(width=8, outputs={"hematocrit": 1, "anemia": 1, "cls": 4}))
    out = model(torch.randn(5, 7, 2))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "hematocrit": (5, 1), "anemia": (5, 1), "cls": (5, 4)
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_every_parameter_gets_a_gradient(family):
    # unused parameters would break DistributedDataParallel
    config = ModelConfig(family=family, width=8, heads=2, slots=3, inducing=2 if "trans" in family else 0)
    model = build_model(config)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    out = model(torch.randn(2, 6, 2), mask)
    out["hematocrit"].sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing
