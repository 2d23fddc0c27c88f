"""Channel units: scaling, the uncalibrated-channel check and factors from MCV / MCH."""

from __future__ import annotations

import numpy as np
import pytest

from flowrbc import pp
from flowrbc.errors import ChannelError
from flowrbc.io.units import apply_scales, clinical_scales, reference_ranges, unit_problems

ROLES = ("volume", "hemoglobin")


def _cells(n=2000, seed=0):
    rng = np.random.default_rng(seed)
    v = rng.lognormal(np.log(90), 0.13, n)  # fL
    h = v * rng.normal(0.33, 0.02, n)  # pg
    return np.stack([v, h], axis=1)  # (n, 2)


def test_apply_scales_multiplies_a_copy_and_refuses_bad_factors():
    x = _cells(10)
    y = apply_scales(x, ROLES, {"hemoglobin": 2.0})
    np.testing.assert_array_equal(y[:, 0], x[:, 0])
    np.testing.assert_array_equal(y[:, 1], 2 * x[:, 1])
    with pytest.raises(ChannelError, match="--scale platelets: unknown role"):
        apply_scales(x, ROLES, {"platelets": 2.0})
    with pytest.raises(ChannelError, match="must be a positive number"):
        apply_scales(x, ROLES, {"volume": 0.0})


def test_unit_problems_only_for_another_unit():
    x = _cells()
    trained = {"volume": {"p001": 60.0, "p999": 130.0}, "hemoglobin": {"p001": 18.0, "p999": 45.0}}
    ref = reference_ranges(ROLES, trained)
    assert unit_problems(x, ROLES, ["V", "H"], ref) == []
    assert unit_problems(x * [1.5, 0.7], ROLES, ["V", "H"], ref) == []  # unusual, not uncalibrated
    raw = x / [0.0009, 1.0]  # volume in instrument units, hemoglobin fine
    (problem,) = unit_problems(raw, ROLES, ["FSC-A", "H"], ref)
    median = f"{np.median(raw[:, 0]):.4g}"
    assert problem.startswith(f"channel 'FSC-A' (volume) has median {median}, far outside the 60-130 fL the model")
    suggest = float(problem.split("about ")[1].split()[0])
    centre = np.sqrt(60.0 * 130.0)
    assert np.median(raw[:, 0] * suggest) == pytest.approx(centre, rel=0.05)
    gate_ref = reference_ranges(ROLES)  # no model: the gate's range and the sample's MCV as the way
    (problem,) = unit_problems(raw, ROLES, ["FSC-A", "H"], gate_ref)
    assert "20-250 fL the RBC gate accepts" in problem and "the sample's MCV / the channel's mean" in problem


def test_clinical_scales_bring_gated_means_to_mcv_and_mch():
    cells = _cells()
    rng = np.random.default_rng(1)
    debris = np.abs(rng.normal(5, 3, (300, 2)))  # platelets and debris the gate removes
    true = np.array([0.0009, 0.0003])
    x = np.concatenate([cells, debris]) / true  # instrument units
    mcv, mch = cells.mean(axis=0)
    f = clinical_scales(x, ROLES, {"volume": mcv, "hemoglobin": mch})
    y = apply_scales(x, ROLES, f)
    keep = pp.rbc_gate(y[:, 0], y[:, 1])
    assert y[keep, 0].mean() == pytest.approx(mcv, rel=1e-3) and y[keep, 1].mean() == pytest.approx(mch, rel=1e-3)
    assert f["volume"] == pytest.approx(true[0], rel=0.01) and f["hemoglobin"] == pytest.approx(true[1], rel=0.01)
    fixed = clinical_scales(x, ROLES, {"volume": mcv}, fixed={"hemoglobin": true[1]})
    assert fixed["hemoglobin"] == true[1] and fixed["volume"] == pytest.approx(true[0], rel=0.01)
    with pytest.raises(ChannelError, match="clinical mcv"):
        clinical_scales(x, ROLES, {"volume": float("nan")})


def test_one_refusal_names_every_channel_out_of_range_with_its_factor():
    """Volume 11x (within FAR of the range, but outside it and the gate) and hemoglobin 31x:
    both are named, each with a factor that brings it into range, and the factors together pass."""
    x = _cells() * [11.0, 31.0]
    trained = {"volume": {"p001": 60.0, "p999": 130.0}, "hemoglobin": {"p001": 18.0, "p999": 45.0}}
    ref = reference_ranges(ROLES, trained)
    volume, hemoglobin = unit_problems(x, ROLES, ["FSC-A", "SSC-A"], ref)
    assert volume.startswith("channel 'FSC-A' (volume) has median ") and ", outside the 60-130 fL" in volume
    assert hemoglobin.startswith("channel 'SSC-A' (hemoglobin)") and "far outside the 18-45 pg" in hemoglobin
    factors = {role: float(p.split("(about ")[1].split()[0]) for role, p in zip(ROLES, (volume, hemoglobin))}
    scaled = apply_scales(x, ROLES, factors)
    assert unit_problems(scaled, ROLES, ["FSC-A", "SSC-A"], ref, factors) == []
    assert pp.rbc_gate(scaled[:, 0], scaled[:, 1]).mean() > 0.99
    gate = unit_problems(x, ROLES, ["FSC-A", "SSC-A"], reference_ranges(ROLES))  # no model: the gate's range
    assert len(gate) == 2 and "outside the 20-250 fL the RBC gate accepts" in gate[0]
    assert unit_problems(x * [1.0, 1 / 31], ROLES, ["FSC-A", "SSC-A"], ref) == []  # 11x alone: the gate tells
