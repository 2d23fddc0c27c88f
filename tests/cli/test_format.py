"""Table numbers: compact, never cut, and read back to within their significant digits."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flowrbc.cli._format import number

_SI = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}


def _read_back(text: str) -> float:
    m = re.fullmatch(r"(-?[\d.]+)(?:([kMGTP])|e(-?\d+))?", text)
    assert m, text
    value = float(m.group(1))
    return value * _SI[m.group(2)] if m.group(2) else value * 10 ** int(m.group(3) or 0)


@pytest.mark.parametrize("value,text", [
    (None, "-"), ("0,0", "0,0"), (0, "0"), (1.0, "1"), (-1024, "-1024"), (65536, "65536"),
    (262144, "262.1k"), (-262144.0, "-262.1k"), (4294967296, "4.295G"), (999960, "1M"),
    (12.3456, "12.35"), (0.91234, "0.9123"), (1234.56, "1235"), (0.001234, "0.001234"),
    (1.234e-5, "12.34e-6"), (float("nan"), "nan"), (float("-inf"), "-inf"),
])
def test_number_examples(value, text):
    assert number(value) == text


@given(st.floats(min_value=-1e17, max_value=1e17, allow_nan=False)
       .filter(lambda x: x == 0 or abs(x) > 1e-12))
def test_number_is_short_and_reads_back(x):
    text = number(x)
    # a sign and eight characters at most; one more below 1e-9, where the exponent has two digits
    assert len(text) <= 8 + (x < 0) + (0 < abs(x) < 1e-9), text
    back = _read_back(text)
    assert math.isclose(back, x, rel_tol=5e-4, abs_tol=0), (x, text)
