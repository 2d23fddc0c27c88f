"""Paired comparisons: per-patient differences, DeLong's AUROC placements and SE."""

import math

import numpy as np

from flowrbc.evaluation import paired, paired_auroc, placements, ranks, verdict


def _psi_brute(y, s):
    """V10, V01 by comparing every positive with every negative."""
    pos, neg = s[y], s[~y]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])  # (m, n)
    return psi.mean(1), psi.mean(0)


def test_placements_match_all_pairs_with_ties():
    rng = np.random.default_rng(0)
    y = rng.random(60) < 0.3
    s = np.round(rng.normal(size=60) + y, 1)  # rounded: many ties, within and across classes
    v10, v01 = placements(y, s)
    b10, b01 = _psi_brute(y, s)
    np.testing.assert_allclose(v10, b10)
    np.testing.assert_allclose(v01, b01)
    assert math.isclose(paired_auroc(y.astype(float), s)["diff"], b10.mean())


def test_ranks_average_ties():
    np.testing.assert_array_equal(ranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4.0, 1.0, 4.0, 2.0, 4.0])


def test_delong_se_matches_the_spread_over_independent_cohorts():
    """Over 400 independent cohorts of 300 patients, the SD of AUROC (one predictor) and of the
    AUROC difference of two correlated predictors agree with the mean DeLong SE (within 15 %)."""
    rng = np.random.default_rng(1)
    aucs, diffs, se1, se2 = [], [], [], []
    for _ in range(400):
        y = rng.random(300) < 0.25
        shared = rng.normal(size=300)
        a = 1.2 * y + shared + 0.5 * rng.normal(size=300)
        b = 0.9 * y + shared + 0.5 * rng.normal(size=300)
        one, two = paired_auroc(y, a), paired_auroc(y, a, b)
        aucs.append(one["diff"]), diffs.append(two["diff"]), se1.append(one["se"]), se2.append(two["se"])
    assert abs(np.mean(se1) / np.std(aucs) - 1) < 0.15
    assert abs(np.mean(se2) / np.std(diffs) - 1) < 0.15
    assert np.mean(se2) < 0.7 * math.sqrt(2) * np.mean(se1)  # pairing removes the shared part


def test_paired_auroc_without_both_classes_is_nan():
    out = paired_auroc(np.zeros(5), np.arange(5.0))
    assert math.isnan(out["diff"]) and math.isnan(out["se"]) and out["n"] == 5


def test_paired_loss_difference_and_verdict():
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.5, 3.5, 5.5])
    out = paired(a, b)
    d = a - b
    assert math.isclose(out["diff"], d.mean()) and math.isclose(out["se"], d.std(ddof=1) / 2.0)
    assert verdict(out) == "better"  # -0.875 against an SE of 0.24
    assert verdict({"diff": 0.1, "se": 0.1}) == "tie"
