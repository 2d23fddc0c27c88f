"""Cohort training: runs, checkpoints, calibration, resume after a kill, covariates."""

import numpy as np
import pytest
import torch

from flowrbc.errors import FlowrbcError
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.train import TrainConfig, train_cohort

TINY = dict(width=16, depth=1, set_size=32, epochs=3, batch_size=16, device="cpu", seed=5)


@pytest.fixture(scope="module")
def cohort():
    return synthetic_cohort(n_patients=80, n_cells=64, seed=11)


def test_train_cohort_writes_a_complete_run(cohort, tmp_path):
    result = train_cohort(cohort, TrainConfig(**TINY), tmp_path / "run", plots=False)
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "metrics.json").is_file()
    test = result.metrics["test"]
    assert set(test["model"]) == {"hematocrit", "anemia"}
    assert set(test["baseline"]) == {"hematocrit", "anemia"}
    assert "mse" in test["bound"]["hematocrit"]
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
    side = len(payload["index_inputs"]["names"])  # the index features follow the covariates
    assert payload["covariates"]["names"] == ["sex", "age"] and payload["model_config"]["covariates"] == 2 + side
    train_ages = cohort.samples["age"].to_numpy(float)[cohort.samples["split"].to_numpy() == "train"]
    assert payload["covariates"]["mean"]["age"] == pytest.approx(train_ages.mean())
    assert "halfwidth" in payload["calibration"]["hematocrit"]["covariates_unknown"]
    assert "temperature" in payload["calibration"]["anemia"]["covariates_unknown"]
    assert set(result.metrics["test"]["model_covariates_unknown"]) == {"hematocrit", "anemia"}

    plain = train_cohort(cohort, TrainConfig(**TINY, covariates=()), tmp_path / "plain", plots=False)
    assert load_checkpoint(tmp_path / "plain" / "model.pt")["model_config"]["covariates"] == side
    assert "model_covariates_unknown" not in plain.metrics["test"]
    with pytest.raises(FlowrbcError, match="--covariate bmi: the cohort's sample table has no 'bmi' column"):
        train_cohort(cohort, TrainConfig(**TINY, covariates=("bmi",)), tmp_path / "bad", plots=False)


def test_index_inputs_follow_the_covariates_and_survive_covariate_dropout(cohort, tmp_path):
    """The decoder reads [covariates, encoded index features]; dropout hides covariates only;
    --cells-only trains a model without them."""
    from flowrbc.checkpoint import load_checkpoint
    from flowrbc.hybrid import index_features
    from flowrbc.prepare import TrainingData

    data = TrainingData.of(cohort, targets=None, covariates=None, index_inputs=True, set_size=32,
                           device=torch.device("cpu"))
    prep = data.prep
    F, names = index_features(prep.raw[:, 0], prep.raw[:, 1], prep.offsets_np)
    assert data.predictor.index_inputs.names == names and data.decoder_width == 2 + len(names)
    side = prep.encoded_features
    enc = side[torch.as_tensor(data.split["train"])]
    assert enc.mean(0).abs().max() < 0.3 and enc.abs().max() <= 6.0  # standardised on train, clipped
    idx = torch.arange(4000) % prep.n
    inputs = data.decoder_inputs(idx, dropout=0.2, generator=torch.Generator().manual_seed(0))
    known = data.decoder_inputs(idx)
    hidden = (inputs[:, :2] == 0) & (known[:, :2] != 0)
    assert abs(float(hidden.float().mean()) - 0.2) < 0.03  # each covariate "unknown" at the dropout rate
    torch.testing.assert_close(inputs[:, 2:], side[idx])  # index inputs always there
    np.testing.assert_allclose(side[:40].numpy(), data.predictor.index_inputs.encode(F[:40]), rtol=0, atol=0)

    train_cohort(cohort, TrainConfig(**TINY, index_inputs=False), tmp_path / "cells", plots=False)
    payload = load_checkpoint(tmp_path / "cells" / "model.pt")
    assert payload["index_inputs"] is None and payload["model_config"]["covariates"] == 2


def test_a_model_trained_on_every_cell_predicts_on_every_cell(tmp_path):
    """``set_size=None``: each training set is a bootstrap of the patient's cells (ragged,
    masked), and the predictor reads each patient's every cell in one set."""
    from flowrbc.predictor import Predictor
    from flowrbc.prepare import TrainingData

    from flowrbc.io.cohort import Cohort

    full = synthetic_cohort(n_patients=60, n_cells=80, seed=12)
    keep = [np.arange(full.offsets[i], full.offsets[i + 1] - 7 * (i % 3)) for i in range(full.n_samples)]  # ragged
    counts = [len(k) for k in keep]
    cohort = Cohort(full.X[np.concatenate(keep)], np.concatenate([[0], np.cumsum(counts)]), full.samples,
                    full.channels, full.roles, "ragged")
    data = TrainingData.of(cohort, targets=None, covariates=None, index_inputs=False, set_size=None,
                           device=torch.device("cpu"))
    idx = torch.as_tensor(data.split["train"][:8])
    x, mask = data.draw(idx, None, torch.Generator().manual_seed(0))
    n = (data.prep.offsets[idx + 1] - data.prep.offsets[idx]).tolist()
    assert x.shape[1] == max(n) and mask.sum(1).tolist() == n  # as many cells as each patient has
    result = train_cohort(cohort, TrainConfig(**dict(TINY, set_size=None)), tmp_path / "all", plots=False)
    predictor = Predictor.load(result.run_dir / "model.pt")
    assert predictor.set_size is None
    prep = predictor.prepare_cohort(cohort, np.arange(6))
    once, _ = predictor.predict(prep, seed=0)
    again, _ = predictor.predict(prep, seed=9, draws=1)  # no draws: the seed changes nothing
    np.testing.assert_array_equal(once.value["hematocrit"], again.value["hematocrit"])
