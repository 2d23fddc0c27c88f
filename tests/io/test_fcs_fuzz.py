"""Damaged FCS files: every read either succeeds with consistent shapes or raises FCSError."""

from __future__ import annotations

import warnings

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowrbc.errors import FCSError
from flowrbc.io.fcs import FCSWarning, read_fcs_data
from tests.io.fcs_builders import float_file, int_file

_RNG = np.random.default_rng(0)
_INTS = _RNG.integers(0, 2**16, size=(40, 4)) % np.array([256, 2**16, 2**16, 2**16])
_FLOATS = _RNG.normal(80, 15, size=(40, 3))


def _base(kind: int, extra: dict[str, str] | None = None) -> bytes:
    if kind == 0:
        return int_file(_INTS, [8, 16, 24, 32], [256, 65536, 2**24, 2**32], extra=extra,
                        amps=["0,0", "4,1", "0,0", "0,0"], gains=[None, None, "2", None])
    if kind == 1:
        return float_file(_FLOATS, names=["RBC Volume", "RBC Hb", "Time"], extra=extra)
    first = int_file(_INTS, [16] * 4, [1024] * 4, order=">", extra=extra, nextdata=0)
    return int_file(_INTS, [16] * 4, [1024] * 4, order=">", extra=extra, nextdata=len(first)) + \
        float_file(_FLOATS)


def _check(path, size: int) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FCSWarning)
            d = read_fcs_data(path)
    except FCSError as exc:
        msg = str(exc)
        assert msg.startswith(f"{path}: ") and "\n" not in msg
        return
    n, p = d.events.shape
    assert d.events.dtype == np.float32
    assert len(d.names) == len(d.labels) == len(d.channel_meta) == p
    assert len(set(d.names)) == p
    assert d.raw is None or d.raw.shape == (n, p)
    assert d.events.nbytes <= 8 * size + 1024  # never allocates far beyond the file
    assert 0 <= d.dataset < d.n_datasets


_junk = st.one_of(
    st.integers(-(10**15), 10**15).map(str),
    st.text(alphabet="0123456789-., eE/|abc", min_size=1, max_size=12),
)
_keys = st.sampled_from(["$PAR", "$TOT", "$P1B", "$P2B", "$P3B", "$P1R", "$P2E", "$P3G", "$BYTEORD",
                         "$DATATYPE", "$BEGINDATA", "$ENDDATA", "$NEXTDATA", "$MODE", "$P1N",
                         "$SPILLOVER", "$TIMESTEP"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.integers(0, 2), data=st.data())
def test_damaged_files_fail_cleanly(tmp_path, kind, data):
    op = data.draw(st.sampled_from(["truncate", "header", "keyword", "bytes"]))
    if op == "keyword":  # a TEXT value replaced, the file otherwise well formed
        raw = _base(kind, {data.draw(_keys): data.draw(_junk)})
    else:
        raw = bytearray(_base(kind))
        if op == "truncate":
            raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
        elif op == "header":
            i = data.draw(st.integers(0, 57))
            raw[i] = ord(data.draw(st.sampled_from("0123456789 -xF")))
        else:
            for _ in range(data.draw(st.integers(1, 8))):
                raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        raw = bytes(raw)
    path = tmp_path / "damaged.fcs"
    path.write_bytes(raw)
    _check(path, len(raw))
