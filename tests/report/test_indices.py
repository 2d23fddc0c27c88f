"""Classic indices from hand-made cells, reference intervals, flags, Mentzer, contours."""

import numpy as np
import pytest

from flowrbc.report import indices as ix
from flowrbc.report.figures import hdr_levels


def test_indices_of_four_known_cells():
    # volume (fL), content (pg): CHC = 40, 25, 45, 33.3 g/dL
    cells = np.array([[50.0, 20.0], [100.0, 25.0], [130.0, 58.5], [90.0, 30.0]])
    got = ix.patient_indices(cells)
    v, h = cells[:, 0], cells[:, 1]
    chc = 100 * h / v
    assert got["mcv"] == pytest.approx(92.5) and got["mch"] == pytest.approx(h.mean())
    assert got["mchc"] == pytest.approx(100 * h.mean() / 92.5)
    assert got["rdw"] == pytest.approx(100 * v.std() / v.mean())
    assert got["hdw"] == pytest.approx(chc.std())
    assert (got["pct_micro"], got["pct_macro"], got["pct_hypo"], got["pct_hyper"]) == (25.0, 25.0, 25.0, 25.0)


def test_intervals_by_sex_and_from_the_healthy_summary():
    men, women, either = (ix.reference_interval("mcv", s, None) for s in ("M", "F", None))
    assert men.low == pytest.approx(87.7 - 1.96 * 3.3) and women.high == pytest.approx(86.6 + 1.96 * 4.1)
    assert either.low == min(men.low, women.low) and either.high == max(men.high, women.high)
    assert "women" in women.source and "sex unknown" in either.source
    assert ix.reference_interval("hdw", "M", None) is None  # no literature value, no summary
    healthy = {"indices": {"hdw": {"p2.5": 2.0, "p50": 2.6, "p97.5": 3.1}}}
    hdw = ix.reference_interval("hdw", "M", healthy)
    assert (hdw.low, hdw.high) == (2.0, 3.1) and "training cohort" in hdw.source
    assert [ix.flag(x, hdw) for x in (1.9, 2.5, 3.2)] == ["low", "normal", "high"]
    assert ix.flag(2.5, None) == ""


def test_mentzer_index():
    index, words = ix.mentzer(66.0, 6.0)
    assert index == pytest.approx(11.0) and "thalassemia" in words
    assert "iron deficiency" in ix.mentzer(70.0, 4.0)[1]


def test_highest_density_levels_hold_their_share():
    rng = np.random.default_rng(0)
    density, _, _ = np.histogram2d(rng.normal(size=20000), rng.normal(size=20000), bins=40)
    for level, mass in zip(hdr_levels(density, (0.5, 0.9))[::-1], (0.5, 0.9), strict=True):
        inside = density[density >= level].sum() / density.sum()
        assert mass <= inside < mass + 0.05
