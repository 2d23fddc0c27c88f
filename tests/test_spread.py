"""Per-patient intervals (``flowrbc.spread``): normalised split conformal keeps its marginal
coverage on held-out data, its width follows the error where the truth is known, and the
predictor reports each patient's own interval (a checkpoint without a spread model: one
width for all, as before)."""

import numpy as np
import pytest

from flowrbc.calibration import conformal_quantile, fit_normalised_conformal
from flowrbc.checkpoint import load_checkpoint, save_checkpoint
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.predictor import Predictor
from flowrbc.spread import SpreadModel, fit_spread, out_of_fold, spread_inputs, training_error
from flowrbc.train import TrainConfig, train_cohort


def toy(n: int, rng: np.random.Generator):
    """Heteroscedastic data whose truth is known: y = f(x) + σ(x) ε, σ(x) = 0.3 + 3 x₀."""
    x = rng.random((n, 4))
    sigma = 0.3 + 3.0 * x[:, 0]
    f = 10 * x[:, 1] + 5 * x[:, 2] ** 2
    return x, f, sigma, f + sigma * rng.standard_normal(n)


@pytest.fixture(scope="module")
def fitted():
    """A spread model fitted on 1,500 toy cases' errors of the predictor f (inputs: x and f)."""
    rng = np.random.default_rng(0)
    x, f, _, y = toy(1500, rng)
    X = spread_inputs(x, np.empty((len(x), 0)), {"y": f})
    return fit_spread(X, f - y, [f"x{j}" for j in range(4)] + ["output_y"]), rng


def test_normalised_conformal_covers_held_out_cases(fitted):
    model, rng = fitted
    covered, widths = [], []
    for _ in range(100):  # calibration on 300 cases, coverage on 2,000 others, the spread model fixed
        x, f, _, y = toy(2300, rng)
        s = model.predict(spread_inputs(x, np.empty((len(x), 0)), {"y": f}))
        cal = fit_normalised_conformal(f[:300], y[:300], s[:300], 0.9)
        covered.append(np.mean(np.abs(y[300:] - f[300:]) <= cal["scale"] * s[300:]))
        widths.append(np.mean(cal["scale"] * s[300:]))
        assert conformal_quantile(np.asarray(cal["scores"]), 0.9) == cal["scale"]
    assert 0.895 <= np.mean(covered) <= 0.93  # the finite-sample guarantee, and not wildly above
    assert min(covered) > 0.82


def test_width_follows_the_error_where_the_truth_is_known(fitted):
    model, rng = fitted
    x, f, sigma, y = toy(20000, rng)
    s = model.predict(spread_inputs(x, np.empty((len(x), 0)), {"y": f}))
    assert np.corrcoef(s, sigma)[0, 1] > 0.9
    cal = fit_normalised_conformal(f[:300], y[:300], s[:300], 0.9)
    half, err = cal["scale"] * s[300:], (y - f)[300:]
    decile = np.empty(len(half), np.int64)
    decile[np.argsort(half)] = np.arange(len(half)) * 10 // len(half)
    rmse = np.array([np.sqrt(np.mean(err[decile == k] ** 2)) for k in range(10)])
    coverage = np.array([np.mean(np.abs(err[decile == k]) <= half[decile == k]) for k in range(10)])
    assert (np.diff(rmse) > 0).sum() >= 8 and rmse[-1] > 3 * rmse[0]  # the error rises across the deciles
    assert coverage.min() > 0.8  # and every decile is covered, where one width would not be
    one = conformal_quantile((y - f)[:300], 0.9)  # one width for all, calibrated on the same cases
    assert np.mean(np.abs(err[decile == 9]) <= one) < 0.8
    assert half.mean() < one  # narrower on average than one width for all


def test_out_of_fold_and_training_error():
    rng = np.random.default_rng(1)
    X = rng.random((200, 3))
    y = 5 * X[:, 0] + rng.normal(0, 0.1, 200)
    rows = np.arange(0, 200, 2)
    oof = out_of_fold(X, y, rows, seed=0, folds=4)
    assert oof.shape == (100,) and np.isfinite(oof).all()
    assert np.mean((oof - y[rows]) ** 2) < np.var(y[rows])
    np.testing.assert_allclose(training_error(np.ones(3), np.full(3, 3.0), np.zeros(3)), 2.0)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("spread")
    cohort = synthetic_cohort(n_patients=300, n_cells=128, seed=4)
    config = TrainConfig(width=16, depth=1, set_size=64, epochs=1, batch_size=16, device="cpu")
    result = train_cohort(cohort, config, root / "run", plots=False)
    return result.run_dir / "model.pt", cohort, result


def test_predictor_reports_each_patients_own_interval(run):
    path, cohort, result = run
    predictor = Predictor.load(path)
    cal = predictor.calibration["hematocrit"]
    assert "hematocrit" in predictor.spread and {"scale", "scores", "spread", "wide_halfwidth"} <= set(cal)
    assert "spread" not in result.metrics["calibration"]["hematocrit"]  # metrics.json stays plain
    prep = predictor.prepare_cohort(cohort, np.arange(40))
    raw, _ = predictor.predict(prep, seed=1)
    values = predictor.calibrated(raw)
    half = values["hematocrit_halfwidth"]
    np.testing.assert_allclose(half, cal["scale"] * raw.spread["hematocrit"])
    for j in (0, 1):
        rec = predictor.record({k: v[j] for k, v in values.items()}, False)
        assert rec["hematocrit_high"] - rec["hematocrit"] == pytest.approx(half[j])
        assert rec["hematocrit_interval_wide"] == (half[j] > cal["wide_halfwidth"])
        other = predictor.record({k: v[j] for k, v in values.items()}, False, coverage=0.6)
        assert other["hematocrit_high"] - other["hematocrit"] == pytest.approx(
            predictor.halfwidths("hematocrit", raw, coverage=0.6)[j])
        assert other["hematocrit_high"] - other["hematocrit"] <= rec["hematocrit_high"] - rec["hematocrit"]
    # covariates unknown: the set model alone, its own normalised calibration, each patient's width
    _, blind = predictor.predict(prep, seed=1, unknown_too=True)
    cal_u = cal["covariates_unknown"]
    assert {"scale", "wide_halfwidth"} <= set(cal_u)
    blind_values = predictor.calibrated(blind)
    np.testing.assert_allclose(blind_values["hematocrit_halfwidth"], cal_u["scale"] * blind.spread["hematocrit"])
    assert np.ptp(blind_values["hematocrit_halfwidth"]) > 0
    unknown = predictor.record({k: v[0] for k, v in blind_values.items()}, True)
    assert unknown["hematocrit_high"] - unknown["hematocrit"] == pytest.approx(blind_values["hematocrit_halfwidth"][0])
    assert unknown["hematocrit_interval_wide"] == (blind_values["hematocrit_halfwidth"][0] > cal_u["wide_halfwidth"])


def test_checkpoint_without_a_spread_model_gives_one_width(run, tmp_path):
    path, cohort, _ = run
    payload = load_checkpoint(path)
    for key in ("scale", "scores", "spread", "wide_halfwidth"):
        payload["calibration"]["hematocrit"].pop(key)
    save_checkpoint(tmp_path / "model.pt", payload)
    predictor = Predictor.load(tmp_path / "model.pt")
    assert predictor.spread == {}
    raw, _ = predictor.predict(predictor.prepare_cohort(cohort, np.arange(10)), seed=1)
    assert raw.spread == {}
    half = predictor.halfwidths("hematocrit", raw)
    np.testing.assert_allclose(half, payload["calibration"]["hematocrit"]["halfwidth"])
    rec = predictor.record({k: v[0] for k, v in predictor.calibrated(raw).items()}, False)
    assert rec["hematocrit_high"] - rec["hematocrit"] == pytest.approx(half[0])
    assert "hematocrit_interval_wide" not in rec
    rec = predictor.record({"hematocrit": 40.0, "anemia": 0.2}, False)  # a caller without widths: one width
    assert rec["hematocrit_high"] - 40.0 == pytest.approx(half[0])


def test_spread_model_state_round_trip(fitted):
    model, rng = fitted
    again = SpreadModel.from_state(model.to_state())
    X = rng.random((50, 5))
    np.testing.assert_array_equal(again.predict(X), model.predict(X))
    assert SpreadModel.from_state(None) is None
    with pytest.raises(ValueError, match="reads 5 inputs"):
        model.predict(X[:, :3])
