"""Metrics against hand-computed values; moment features against per-sample numpy."""

import math

import numpy as np
import pytest

from flowrbc.metrics import (
    classification_metrics,
    expected_calibration_error,
    fit_moment_baseline,
    moment_features,
    regression_metrics,
    segment_percentiles,
)


def test_regression_metrics_by_hand():
    m = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 5.0]))
    assert m["mse"] == pytest.approx(5 / 3)
    assert m["mae"] == pytest.approx(1.0)
    assert m["r2"] == pytest.approx(1 - 5 / 2)  # SSE 5, SST 2


def test_ece_by_hand():
    # bins of width 1/15: 0.1 -> bin 1, 0.9 -> bin 13
    y = np.array([0, 0, 1, 1, 1, 0])
    p = np.array([0.1, 0.1, 0.1, 0.9, 0.9, 0.9])
    # bin 1: mean y 1/3 vs p 0.1 -> |0.2333|; bin 13: mean y 2/3 vs 0.9 -> 0.2333; weights 1/2
    assert expected_calibration_error(y, p) == pytest.approx(0.7 / 3)
    assert expected_calibration_error(np.array([1, 0]), np.array([1.0, 0.0])) == 0.0


def test_classification_metrics_by_hand():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = classification_metrics(y, p)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["brier"] == pytest.approx((0.01 + 0.36 + 0.36 + 0.01) / 4)
    assert m["auroc"] == pytest.approx(0.75)  # 3 of 4 positive-negative pairs ordered
    assert math.isnan(classification_metrics(np.array([1, 1]), np.array([0.3, 0.8]))["auroc"])


def test_moment_features_match_per_sample_numpy():
    rng = np.random.default_rng(0)
    counts = np.array([7, 1, 30, 12])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    vol = rng.lognormal(np.log(88), 0.15, offsets[-1])
    hb = vol * rng.normal(0.33, 0.02, offsets[-1])
    F, names = moment_features(vol, hb, offsets)
    assert F.shape == (4, len(names)) and len(set(names)) == len(names)
    col = {n: i for i, n in enumerate(names)}
    for s in range(4):
        v, h = vol[offsets[s] : offsets[s + 1]], hb[offsets[s] : offsets[s + 1]]
        assert F[s, col["volume_mean"]] == pytest.approx(v.mean())
        assert F[s, col["rdw"]] == pytest.approx(100 * v.std() / v.mean())
        assert F[s, col["mchc"]] == pytest.approx(100 * h.mean() / v.mean())
        assert F[s, col["hemoglobin_p25"]] == pytest.approx(np.percentile(h, 25))
        assert F[s, col["volume_p95"]] == pytest.approx(np.percentile(v, 95))
        assert F[s, col["frac_microcytic"]] == pytest.approx(np.mean(v < 80))
    with pytest.raises(ValueError, match="sample 1 has no cells"):
        segment_percentiles(vol[:5], np.array([0, 5, 5]))


def test_moment_baseline_learns_a_moment_target():
    rng = np.random.default_rng(1)
    n = 160
    counts = rng.integers(50, 80, n)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    mcv = rng.normal(88, 8, n)
    vol = rng.normal(np.repeat(mcv, counts), 5)
    hb = vol * 0.33
    F, names = moment_features(vol, hb, offsets)
    y = {"hematocrit": 0.5 * mcv, "anemia": (mcv < 85).astype(float)}
    split = rng.choice(3, n, p=[0.6, 0.2, 0.2])
    base = fit_moment_baseline(F, y, split == 0, split == 1, names)
    pred = base.predict(F[split == 2])
    assert regression_metrics(y["hematocrit"][split == 2], pred["hematocrit"])["r2"] > 0.8
    assert classification_metrics(y["anemia"][split == 2], pred["anemia"])["accuracy"] > 0.8
