"""The one predictor: training's finishing step, ``flowrbc evaluate`` and ``flowrbc predict``
give the same figures and the same per-patient predictions for one model and seed."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from flowrbc.cli import app
from flowrbc.evaluate import evaluate_cohort
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.io.cohort import write_cohort
from flowrbc.io.fcs import write_fcs_arrays
from flowrbc.predict import predict_file
from flowrbc.predictor import Predictor
from flowrbc.train import TrainConfig, train_cohort

TINY = dict(width=16, depth=1, set_size=64, epochs=2, batch_size=16, device="cpu")
SHOWN = {"hematocrit": ("mse", "mae", "r2", "coverage", "mse_se"), "anemia": ("accuracy", "auroc", "brier", "ece")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predictor")
    cohort = synthetic_cohort(n_patients=120, n_cells=300, seed=8)
    write_cohort(cohort, root / "cohort.h5ad")
    result = train_cohort(cohort, TrainConfig(**TINY), root / "run", plots=False)
    return root, cohort, result


def test_train_test_metrics_equal_flowrbc_evaluate(run):
    root, _, result = run
    out = CliRunner().invoke(app, ["evaluate", str(root / "run" / "model.pt"), str(root / "cohort.h5ad"),
                                   "--split", "test", "--format", "json"])
    assert out.exit_code == 0, out.output
    evaluated = json.loads(out.output)["metrics"]
    trained = result.metrics["test"]["model"]
    for target, keys in SHOWN.items():
        for key in keys:
            assert evaluated[target][key] == pytest.approx(trained[target][key], rel=1e-12), (target, key)


def test_predict_on_fcs_files_equals_evaluate_per_patient(run, tmp_path):
    """Test samples written as FCS files (float32 events, as the cohort holds them) predict
    as the same samples inside the cohort, whatever other samples share a batch: equal to a
    few float32 roundings (matrix kernels may block a batch of another size differently)."""
    root, cohort, _ = run
    evaluated = evaluate_cohort(root / "run" / "model.pt", cohort, split="test", seed=3, per_sample=True)
    predictor = Predictor.load(root / "run" / "model.pt")
    samples = cohort.samples
    for j, sid in enumerate(evaluated["samples"][:6]):
        i = samples.index.get_loc(sid)
        path = tmp_path / f"{sid}.fcs"
        write_fcs_arrays(path, cohort.sample_cells(i), list(cohort.channels))
        got = predict_file(predictor, path, seed=3,
                           covariates={"sex": samples["sex"].iloc[i], "age": float(samples["age"].iloc[i])}).values
        assert got["hematocrit"] == pytest.approx(evaluated["predictions"]["hematocrit"][j], rel=1e-6)
        assert got["anemia_probability"] == pytest.approx(evaluated["predictions"]["anemia"][j], rel=1e-6, abs=1e-7)


def test_a_sample_predicts_the_same_alone_and_in_any_batch(run):
    _, cohort, _ = run
    predictor = Predictor.load(run[0] / "run" / "model.pt")
    prep = predictor.prepare_cohort(cohort)
    together, _ = predictor.predict(prep, np.arange(40), seed=1)
    reversed_, _ = predictor.predict(prep, np.arange(40)[::-1], seed=1)
    alone, _ = predictor.predict(prep, np.array([7]), seed=1)
    other_seed, _ = predictor.predict(prep, np.array([7]), seed=2)
    np.testing.assert_allclose(together.value["hematocrit"], reversed_.value["hematocrit"][::-1], atol=1e-6)
    assert alone.value["hematocrit"][0] == pytest.approx(together.value["hematocrit"][7], abs=1e-6)
    assert other_seed.set_model["hematocrit"][0] == alone.set_model["hematocrit"][0]  # every cell: no draws
    predictor.set_size = 16  # disjoint 16-cell sets: the seed picks them
    sets, _ = predictor.predict(prep, np.array([7]), seed=1)
    sets_other, _ = predictor.predict(prep, np.array([7]), seed=2)
    assert sets_other.set_model["hematocrit"][0] != pytest.approx(sets.set_model["hematocrit"][0], abs=1e-6)


def test_unknown_covariates_use_the_set_model_and_its_own_calibration(run):
    """A sample whose age is missing is predicted by the set model alone (no blend with the
    index members), with the calibration fitted with covariates unknown."""
    _, cohort, _ = run
    predictor = Predictor.load(run[0] / "run" / "model.pt")
    prep = predictor.prepare_cohort(cohort, np.arange(10))
    prep.cov_raw[3, 1] = np.nan
    raw, _ = predictor.predict(prep, seed=0)
    assert raw.unknown.tolist() == [i == 3 for i in range(10)]
    assert raw.value["hematocrit"][3] == raw.set_model["hematocrit"][3]
    assert raw.value["hematocrit"][2] != raw.set_model["hematocrit"][2]
    predictor.calibration["anemia"].update(temperature=1.0, covariates_unknown={"temperature": 3.0})
    p = predictor.calibrated(raw)["anemia"]
    z = raw.value["anemia"]
    assert p[3] == pytest.approx(1 / (1 + np.exp(-z[3] / 3.0)))  # the unknown-covariate temperature
    assert p[2] == pytest.approx(1 / (1 + np.exp(-z[2])))
