"""Covariate encoding: sex ±1, standardised age, 0 for unknown; request values and keywords."""

import math

import numpy as np
import pandas as pd
import pytest

from flowrbc.covariates import CovariateEncoder, parse_sex, resolve_names
from flowrbc.errors import FlowrbcError


@pytest.fixture
def samples():
    return pd.DataFrame({"sex": ["M", "F", None, "female", "x"], "age": [20.0, 40.0, 60.0, np.nan, 80.0],
                         "note": list("abcde")})


def test_parse_sex():
    assert [parse_sex(v) for v in ("M", " male", "f", "Woman", "U", "", None, math.nan)] == [1, 1, -1, -1, 0, 0, 0, 0]


def test_encoding_uses_training_statistics_and_zero_for_unknown(samples):
    enc = CovariateEncoder.fit(samples, ["sex", "age"], np.array([0, 1, 2]))
    assert enc.mean["age"] == pytest.approx(40.0) and enc.std["age"] == pytest.approx(np.std([20, 40, 60]))
    z = enc.encode(samples)
    np.testing.assert_allclose(z[:, 0], [1, -1, 0, -1, 0])
    np.testing.assert_allclose(z[:, 1], [(20 - 40) / enc.std["age"], 0, 20 / enc.std["age"], 0, 40 / enc.std["age"]],
                               rtol=1e-6)
    raw = enc.raw(samples)  # the baseline's columns: NaN where unknown
    assert np.isnan(raw[2, 0]) and np.isnan(raw[3, 1]) and raw[0, 1] == 20.0
    again = CovariateEncoder.from_dict(enc.to_dict())
    np.testing.assert_array_equal(again.encode(samples), z)


def test_request_values_override_keywords(samples):
    enc = CovariateEncoder.fit(samples, ["sex", "age"], np.arange(5))
    used, raw = enc.values({"sex": "F"}, {"FLOWRBC_SEX": "M", "AGE": "71"})
    assert used == {"sex": "F", "age": 71.0} and raw.tolist() == [-1.0, 71.0]
    used, raw = enc.values(None, {"$CYT": "x"})
    assert used == {"sex": None, "age": None} and np.isnan(raw).all()
    np.testing.assert_array_equal(enc.encode_raw(raw[None]), [[0.0, 0.0]])


def test_names_and_errors(samples):
    assert resolve_names(samples, None) == ["sex", "age"]
    assert resolve_names(samples[["age"]], None) == ["age"]
    assert resolve_names(samples, ()) == []
    with pytest.raises(FlowrbcError, match="--covariate bmi: the cohort's sample table has no 'bmi' column"):
        CovariateEncoder.fit(samples, ["bmi"], np.arange(5))
    with pytest.raises(FlowrbcError, match="--covariate note: column 'note' is not numeric"):
        CovariateEncoder.fit(samples, ["note"], np.arange(5))
