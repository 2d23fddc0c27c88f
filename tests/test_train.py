"""Cohort training: runs, checkpoints, calibration, resume after a kill, covariates."""

import pytest
import torch

from flowrbc.errors import FlowrbcError
from flowrbc.io.cohort import synthetic_cohort
from flowrbc.train import TrainConfig, train_cohort

TINY = dict(width=16, depth=1, cells=32, epochs=3, batch_size=16, draws=2, device="cpu", seed=5)


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(n_patients=80, n_cells=64, seed=11)


def test_train_cohort_writes_a_complete_run(cohort, tmp_path):
    result = train_cohort(cohort, TrainConfig(**TINY), tmp_path / "run", plots=False)
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    test = result.metrics["test"]
    assert set(test["model"]) == {"hematocrit", "anemia"}
    assert set(test["baseline"]) == {"hematocrit", "anemia"}
    assert "mse" in test["oracle"]["hematocrit"]
    assert 0.0 <= test["model"]["hematocrit"]["coverage"] <= 1.0
    assert result.history[-1]["loss"] < result.history[0]["loss"] * 1.5  # finite, not exploding
    assert (tmp_path / "latest").resolve() == (tmp_path / "run").resolve()


def test_resume_ends_like_an_uninterrupted_run(cohort, tmp_path):
    full = train_cohort(cohort, TrainConfig(**TINY), tmp_path / "full", plots=False)

    class Killed(Exception):
        pass

    def kill_after_first(state):
        if state.epoch == 1:
            raise Killed

    with pytest.raises(Killed):
        train_cohort(cohort, TrainConfig(**TINY), tmp_path / "cut", plots=False, on_epoch_end=kill_after_first)
    resumed = train_cohort(cohort, TrainConfig(**TINY), tmp_path / "cut", plots=False, resume=True)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]
    assert resumed.metrics["test"]["model"] == full.metrics["test"]["model"]
    with pytest.raises(FlowrbcError, match="options differ from the interrupted run \\(epochs\\)"):
        train_cohort(cohort, TrainConfig(**dict(TINY, epochs=4)), tmp_path / "cut", plots=False, resume=True)


def test_covariates_enter_model_calibration_and_metrics(cohort, tmp_path):
    from flowrbc.checkpoint import load_checkpoint

    result = train_cohort(cohort, TrainConfig(**TINY), tmp_path / "cov", plots=False)
    payload = load_checkpoint(tmp_path / "cov" / "model.pt")
    assert payload["covariates"]["names"] == ["sex", "age"] and payload["model_config"]["covariates"] == 2
    train_ages = cohort.samples["age"].to_numpy(float)[cohort.samples["split"].to_numpy() == "train"]
    assert payload["covariates"]["mean"]["age"] == pytest.approx(train_ages.mean())
    assert "halfwidth" in payload["calibration"]["hematocrit"]["covariates_unknown"]
    assert "temperature" in payload["calibration"]["anemia"]["covariates_unknown"]
    assert set(result.metrics["test"]["model_covariates_unknown"]) == {"hematocrit", "anemia"}

    plain = train_cohort(cohort, TrainConfig(**TINY, covariates=()), tmp_path / "plain", plots=False)
    assert load_checkpoint(tmp_path / "plain" / "model.pt")["model_config"]["covariates"] == 0
    assert "model_covariates_unknown" not in plain.metrics["test"]
    with pytest.raises(FlowrbcError, match="--covariate bmi: the cohort's sample table has no 'bmi' column"):
        train_cohort(cohort, TrainConfig(**TINY, covariates=("bmi",)), tmp_path / "bad", plots=False)


def test_covariate_dropout_hides_a_share_of_values():
    from flowrbc.train import covariate_dropout

    cov = torch.ones(4000, 2)
    g = torch.Generator().manual_seed(0)
    out = covariate_dropout(cov, 0.2, g)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert abs(float((out == 0).float().mean()) - 0.2) < 0.02
    assert torch.equal(covariate_dropout(cov, 0.0, g), cov)


def test_one_encoder_pass_predicts_with_and_without_covariates(cohort):
    """The finishing step's shared pass equals two separate predictions, value for value."""
    from flowrbc.models import ModelConfig, build_model
    from flowrbc.predict import predict_sets
    from flowrbc.train import _UNKNOWN, _AlsoUnknown, _CohortData

    data = _CohortData(cohort, TrainConfig(**TINY), torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model(ModelConfig(family="deepsets++", depth=1, width=16, covariates=2,
                                    outputs={"hematocrit": 1, "anemia": 1}))
    idx = data.split["val"]
    cov = data.cov[torch.as_tensor(idx)]
    kw = dict(cells=32, draws=2, seed=3, batch_size=7)
    specs = {**data.specs, **{k + _UNKNOWN: v for k, v in data.specs.items()}}
    both = predict_sets(_AlsoUnknown(model), data.X, data.offsets, idx, specs, covariates=cov, **kw)
    known = predict_sets(model, data.X, data.offsets, idx, data.specs, covariates=cov, **kw)
    unknown = predict_sets(model, data.X, data.offsets, idx, data.specs, **kw)
    for name in data.specs:
        assert (both[name] == known[name]).all()
        assert (both[name + _UNKNOWN] == unknown[name]).all()
        assert not (known[name] == unknown[name]).all()  # the covariates do change the outputs
