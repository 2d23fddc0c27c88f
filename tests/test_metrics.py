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
    PERCENTILES,
    segment_percentiles,
    shape_features,
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
        assert F[s, col["frac_volume_below_80"]] == pytest.approx(np.mean(v < 80))
    with pytest.raises(ValueError, match="sample 1 has no cells"):
        segment_percentiles(vol[:5], np.array([0, 5, 5]))


def test_shape_features_match_per_sample_scipy():
    """Skewness, excess kurtosis and tail percentiles of log volume / log Hb / log CHC and the
    log volume-Hb correlation equal scipy's and numpy's on each ragged segment."""
    from scipy import stats

    rng = np.random.default_rng(1)
    counts = np.array([40, 1, 300, 17])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    vol = rng.lognormal(np.log(88), 0.15, offsets[-1])
    hb = vol * rng.lognormal(np.log(0.33), 0.08, offsets[-1])
    S, names = shape_features(vol, hb, offsets)
    assert S.shape == (4, len(names)) and len(set(names)) == len(names)
    col = {n: i for i, n in enumerate(names)}
    for s in (0, 2, 3):
        lv, lh = np.log(vol[offsets[s] : offsets[s + 1]]), np.log(hb[offsets[s] : offsets[s + 1]])
        lc = np.log(100 * np.exp(lh) / np.exp(lv))
        assert S[s, col["log_volume_skew"]] == pytest.approx(stats.skew(lv))
        assert S[s, col["log_hemoglobin_kurtosis"]] == pytest.approx(stats.kurtosis(lh))
        assert S[s, col["log_chc_skew"]] == pytest.approx(stats.skew(lc), abs=1e-9)
        assert S[s, col["log_volume_p99"]] == pytest.approx(np.percentile(lv, 99), rel=1e-6)
        assert S[s, col["log_chc_p1"]] == pytest.approx(np.percentile(lc, 1), rel=1e-6)
        assert S[s, col["log_volume_hemoglobin_corr"]] == pytest.approx(np.corrcoef(lv, lh)[0, 1])
    assert np.isnan(S[1, col["log_volume_skew"]])  # one cell: no shape
    assert S[1, col["log_volume_p10"]] == pytest.approx(np.log(vol[40]), rel=1e-6)


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


def _per_segment(values, offsets, qs):
    return np.array([np.percentile(values[a:b], qs) for a, b in zip(offsets[:-1], offsets[1:])])


@pytest.mark.parametrize("block_cells", [1 << 22, 64])  # one block per length group; many small blocks
def test_segment_percentiles_equal_numpy_on_ragged_segments(monkeypatch, block_cells):
    import flowrbc.metrics as metrics

    monkeypatch.setattr(metrics, "_BLOCK_CELLS", block_cells)
    rng = np.random.default_rng(3)
    counts = np.concatenate([[1, 2, 3], rng.integers(1, 400, 60), [1000, 7]])
    offsets = np.concatenate([[5], 5 + np.cumsum(counts)])  # the matrix may start past row 0
    values = np.round(rng.normal(90, 10, offsets[-1]), 1)  # ties between cells
    qs = (0, 5, 25, 33.3, 50, 75, 95, 100)
    np.testing.assert_array_equal(segment_percentiles(values, offsets, qs), _per_segment(values, offsets, qs))


def test_segment_percentiles_equal_numpy_on_equal_segments():
    rng = np.random.default_rng(4)
    values = rng.lognormal(4.5, 0.2, 50 * 37)
    offsets = np.arange(51) * 37  # the reshape path
    np.testing.assert_array_equal(segment_percentiles(values, offsets), _per_segment(values, offsets, PERCENTILES))
    values[40] = np.nan  # sample 1 (cells 37..73) holds a NaN: all NaN, as np.percentile gives
    got = segment_percentiles(values, offsets)
    assert np.isnan(got[1]).all() and np.isfinite(np.delete(got, 1, axis=0)).all()


def test_segment_mean_sd_equal_numpy_where_the_mean_dominates():
    from flowrbc.metrics import segment_mean_sd

    rng = np.random.default_rng(5)
    counts = np.array([1, 5, 300, 40, 2])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    values = rng.normal(90, 10, offsets[-1])
    values[1:6] = 42.0  # a constant sample
    values[306:346] = 1e9 + rng.normal(0, 1e-3, 40)  # mean^2 / var = 1e24: the one-pass formula cancels
    mean, sd = segment_mean_sd(values, offsets)
    for s, (a, b) in enumerate(zip(offsets[:-1], offsets[1:])):
        assert mean[s] == pytest.approx(values[a:b].mean(), rel=1e-12)
        assert sd[s] == pytest.approx(values[a:b].std(), rel=1e-6, abs=1e-12)


def test_moment_features_same_from_float32_and_float64_cells():
    rng = np.random.default_rng(6)
    counts = rng.integers(1, 200, 30)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    vol = rng.lognormal(np.log(88), 0.15, offsets[-1]).astype(np.float32)
    hb = (vol * rng.normal(0.33, 0.02, offsets[-1])).astype(np.float32)
    F32, names = moment_features(vol, hb, offsets)
    F64, _ = moment_features(vol.astype(np.float64), hb.astype(np.float64), offsets)
    np.testing.assert_array_equal(F32, F64)


def test_cell_terms_have_one_definition_and_the_feature_shares_keep_their_cut_offs():
    """% hypo / % hyper of the report are the moment features frac_chc_low / high (one bound
    each); the shares by volume and content keep 80 / 100 fL and 27 pg at their positions,
    named by those cut-offs, not as micro- / macrocytic cells (60 / 120 fL)."""
    from flowrbc import metrics
    from flowrbc.report import indices

    assert (indices.MICRO_FL, indices.MACRO_FL, indices.HYPO_CHC, indices.HYPER_CHC) == (60.0, 120.0, 28.0, 41.0)
    assert indices.MICRO_FL is metrics.MICRO_FL and indices.HYPER_CHC is metrics.HYPER_CHC
    rng = np.random.default_rng(7)
    offsets = np.array([0, 400, 900])
    vol = rng.lognormal(np.log(85), 0.25, 900)
    hb = vol * rng.normal(0.33, 0.05, 900)
    F, names = moment_features(vol, hb, offsets)
    assert names[-5:] == ["frac_volume_below_80", "frac_volume_above_100", "frac_hemoglobin_below_27",
                          "frac_chc_low", "frac_chc_high"]
    assert len(names) == 29 and not [n for n in names if "micro" in n or "macro" in n or "chromic" in n]
    ix = indices.cell_indices(vol, hb, offsets)
    for s in range(2):
        v, h = vol[offsets[s] : offsets[s + 1]], hb[offsets[s] : offsets[s + 1]]
        assert F[s, -5:-2].tolist() == [np.mean(v < 80), np.mean(v > 100), np.mean(h < 27)]
        assert F[s, -2] * 100 == pytest.approx(ix["pct_hypo"][s]) and F[s, -1] * 100 == pytest.approx(ix["pct_hyper"][s])
        assert ix["pct_micro"][s] == pytest.approx(100 * np.mean(v < 60))
