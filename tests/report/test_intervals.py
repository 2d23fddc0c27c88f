"""Per-patient intervals in the reports: the patient page says in words when an interval is
wide, the cohort overview shows coverage by decile of the width."""

import numpy as np

from flowrbc.report.cohort import _width_table
from flowrbc.report.page import WIDE_NOTE, ModelInfo, PatientCase, patient_page

INFO = ModelInfo(path="model.pt", description="deepsets++", version="test", cohort="toy", cells=250, healthy=None)


def page(values: dict) -> str:
    case = PatientCase(name="p1", source="p1.fcs", values=values, cells=np.full((10, 2), [90.0, 30.0]))
    return patient_page(case, INFO, b"png")


def test_patient_page_says_when_the_interval_is_wide():
    base = {"hematocrit": 41.0, "hematocrit_low": 33.0, "hematocrit_high": 49.0, "hematocrit_coverage": 0.9,
            "sex": "F", "cells_used": 10, "n_events": 10, "draws": 1, "qc_flags": []}
    wide = page(dict(base, hematocrit_interval_wide=True))
    assert "Uncertain hematocrit" in wide and "its width scaled to the error expected" in wide
    assert WIDE_NOTE.split(":")[0] in wide
    usual = page(dict(base, hematocrit_interval_wide=False))
    assert "Uncertain hematocrit" not in usual and "its width scaled to the error expected" in usual
    for one_width in (base, dict(base, hematocrit_interval_wide=None)):  # no spread model; covariates unknown
        text = page(one_width)
        assert "Uncertain hematocrit" not in text and "its width scaled" not in text


def test_cohort_table_of_coverage_by_width_decile():
    rng = np.random.default_rng(0)
    half = rng.uniform(2, 8, 500)
    true = rng.normal(40, 3, 500)
    pred = true + rng.normal(0, half / 1.645)
    values = [{"hematocrit_low": p - h, "hematocrit_high": p + h} for p, h in zip(pred, half)]
    table = _width_table(true, pred, values)
    assert table.count("<tr>") == 11  # header + 10 deciles
    same = [{"hematocrit_low": p - 5, "hematocrit_high": p + 5} for p in pred]
    assert "same interval, ±5.00" in _width_table(true, pred, same)
    assert "No calibrated interval" in _width_table(true, pred, [{"hematocrit_low": None}] * 500)
