"""Conformal intervals cover as promised; temperature scaling recovers a known temperature."""

import numpy as np
import pytest

from flowrbc.calibration import (
    calibrated_probability,
    conformal_quantile,
    fit_conformal,
    fit_temperature,
    interval_coverage,
)
from flowrbc.errors import FlowrbcError
from flowrbc.metrics import expected_calibration_error


def test_conformal_quantile_rank():
    r = np.arange(1, 10, dtype=float)  # n = 9
    assert conformal_quantile(r, 0.9) == 9.0  # ceil(10 * 0.9) = 9th smallest
    assert conformal_quantile(r, 0.5) == 5.0  # ceil(5) = 5th
    assert conformal_quantile(r[:5], 0.9) == np.inf  # rank 6 > n
    with pytest.raises(FlowrbcError, match="--coverage 1.5"):
        conformal_quantile(r, 1.5)


def test_conformal_coverage_on_heavy_tailed_residuals():
    rng = np.random.default_rng(0)
    covered = []
    for _ in range(200):
        y = rng.standard_t(3, 300) * 2.0
        pred = np.zeros(300)
        cal = fit_conformal(pred[:100], y[:100], coverage=0.9)
        covered.append(interval_coverage(pred[100:], y[100:], cal))
    # marginal coverage >= 0.9 on average (finite-sample guarantee), and not wildly above
    assert 0.895 <= np.mean(covered) <= 0.93


def test_temperature_recovers_overconfidence():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 20000)
    y = (rng.random(20000) < 1 / (1 + np.exp(-true_logit))).astype(float)
    overconfident = 3.0 * true_logit
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.05)
    before = expected_calibration_error(y, calibrated_probability(overconfident, 1.0))
    after = expected_calibration_error(y, calibrated_probability(overconfident, t))
    assert after < before / 3
    assert fit_temperature(overconfident, np.ones_like(y)) == 1.0  # one class: left alone
