"""Per-set covariates enter the decoder beside the pooled embedding."""

import pytest
import torch

from flowrbc.models import ModelConfig, build_model

FAMILIES = ["deepsets++", "set_transformer++", "slot_set"]


def _model(family, covariates=2, seed=0):
    torch.manual_seed(seed)
    config = ModelConfig(family=family, width=8, heads=2, slots=4, covariates=covariates, outputs={"y": 1})
    return build_model(config).double().eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_covariates_change_outputs_not_embeddings(family):
    model = _model(family)
    x = torch.randn(3, 7, 2, dtype=torch.float64)
    male = torch.tensor([[1.0, 0.5]] * 3, dtype=torch.float64)
    female = torch.tensor([[-1.0, 0.5]] * 3, dtype=torch.float64)
    assert not torch.allclose(model(x, covariates=male)["y"], model(x, covariates=female)["y"])
    # left out = all unknown = zeros
    torch.testing.assert_close(model(x)["y"], model(x, covariates=torch.zeros(3, 2, dtype=torch.float64))["y"])
    # the embedding is the cells' alone, and the decoder reads [embedding, covariates]
    assert model.embed(x).shape == (3, model.embed_dim)
    torch.testing.assert_close(model.decode(model.embed(x), male)["y"], model(x, covariates=male)["y"])


@pytest.mark.parametrize("family", FAMILIES)
def test_permutation_and_padding_invariance_with_covariates(family):
    model = _model(family)
    cov = torch.randn(2, 2, dtype=torch.float64)
    x = torch.randn(2, 6, 2, dtype=torch.float64)
    perm = torch.randperm(6)
    torch.testing.assert_close(model(x[:, perm], covariates=cov)["y"], model(x, covariates=cov)["y"])
    padded = torch.cat([x, torch.full((2, 3, 2), 1e4, dtype=torch.float64)], dim=1)
    mask = torch.cat([torch.ones(2, 6, dtype=torch.bool), torch.zeros(2, 3, dtype=torch.bool)], dim=1)
    torch.testing.assert_close(model(padded, mask, covariates=cov)["y"], model(x, covariates=cov)["y"])


def test_streaming_finalize_takes_covariates():
    model = _model("slot_set")
    x = torch.randn(2, 10, 2, dtype=torch.float64)
    cov = torch.tensor([[1.0, -0.3], [-1.0, 1.2]], dtype=torch.float64)
    state = model.init_state(2)
    for lo in range(0, 10, 4):
        state = model.update(state, x[:, lo : lo + 4])
    torch.testing.assert_close(model.finalize(state, cov)["y"], model(x, covariates=cov)["y"])


def test_covariate_shape_and_config_checks():
    model = _model("deepsets++")
    x = torch.randn(2, 5, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"covariates: expected shape \(2, 2\), got \(2, 3\)"):
        model(x, covariates=torch.zeros(2, 3, dtype=torch.float64))
    plain = _model("deepsets++", covariates=0)
    with pytest.raises(ValueError, match="this model takes none"):
        plain(x, covariates=torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="covariates: must be a non-negative integer"):
        ModelConfig(covariates=-1)
    assert ModelConfig.from_dict(ModelConfig(covariates=2).to_dict()).covariates == 2
