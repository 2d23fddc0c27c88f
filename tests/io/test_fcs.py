"""FCS reading: each quirk of real files gives the exact decoded values or a one-line FCSError."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

from flowrbc.errors import FCSError
from flowrbc.io.fcs import FCSWarning, read_fcs, read_fcs_data, write_fcs, write_fcs_arrays
from tests.io.fcs_builders import (
    base_keywords, build_fcs, channel_keywords, fails, float_file, int_file, pack_ints, read, write,
)

INTS = np.array([[0, 1, 255], [7, 200, 128], [255, 0, 3]], dtype=np.int64)  # fit 8 bits


# ---------------------------------------------------------------- integer widths and order


@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("width", [8, 16, 24, 32])
def test_integer_widths_and_byte_order(tmp_path, order, width):
    top = (1 << width) - 1
    values = np.array([[0, top], [1, top - 1], [top // 3, 5]], dtype=np.int64)
    path = write(tmp_path, "w.fcs", int_file(values, [width] * 2, [top + 1] * 2, order=order))
    d = read(path)
    # float32 holds integers exactly up to 2**24; compare with the same rounding
    np.testing.assert_array_equal(d.events, values.astype(np.float32))
    assert d.events.dtype == np.float32 and d.raw is None and d.warnings == []


@pytest.mark.parametrize("order", ["<", ">"])
def test_mixed_widths_in_one_file(tmp_path, order):
    widths = [8, 16, 24, 32]
    values = np.array([[255, 65535, 2**24 - 1, 2**31 + 5], [1, 2, 3, 4], [17, 4096, 70000, 99]])
    path = write(tmp_path, "m.fcs", int_file(values, widths, [2**w for w in widths], order=order))
    d = read(path)
    assert d.events.shape == (3, 4)
    np.testing.assert_array_equal(d.events, values.astype(np.float32))
    assert [m["bits"] for m in d.channel_meta] == widths


def test_integers_are_bit_masked_to_range(tmp_path):
    # $PnR = 1024 -> 10 bits; $PnR = 1000 -> ceil(log2 1000) = 10 bits too.
    values = np.array([[0xFC00 | 5, 0xF000 | 999], [1023, 1023], [1024, 2048 + 7]])
    path = write(tmp_path, "mask.fcs", int_file(values, [16, 16], [1024, 1000]))
    d = read(path)
    np.testing.assert_array_equal(d.events, [[5, 999 & 1023], [1023, 1023], [0, 7]])


def test_log_amplified_integers(tmp_path):
    values = np.array([[0, 0, 0], [512, 512, 512], [1023, 256, 100]])
    amps = ["4,1", "4,0", "2,0.5"]  # f2 = 0 reads as 1
    path = write(tmp_path, "log.fcs", int_file(values, [16] * 3, [1024] * 3, amps=amps))
    d = read(path)
    x = values.astype(np.float64)
    want = np.stack([10 ** (4 * x[:, 0] / 1024), 10 ** (4 * x[:, 1] / 1024),
                     10 ** (2 * x[:, 2] / 1024) * 0.5], axis=1)
    np.testing.assert_allclose(d.events, want.astype(np.float32), rtol=1e-6)
    np.testing.assert_array_equal(d.raw, values)  # stored values kept
    assert any("$P2E=4,0 read as 4,1" in w for w in d.warnings)
    assert d.channel_meta[0]["amplification"] == (4.0, 1.0)


def test_float_data_is_never_log_decoded(tmp_path):
    values = np.array([[1.5, 2.25], [1e6, -3.0]], dtype=np.float32)
    path = write(tmp_path, "flog.fcs", float_file(values, amps=["4,1", "0,0"]))
    with pytest.warns(FCSWarning, match="never log-decoded"):
        d = read_fcs_data(path)
    np.testing.assert_array_equal(d.events, values)
    assert d.raw is None


@pytest.mark.parametrize("double", [False, True])
@pytest.mark.parametrize("order", ["<", ">"])
def test_float_and_double_data(tmp_path, double, order):
    values = np.array([[0.1, -2.5, 3e5], [np.pi, 1e-3, 7.0]])
    path = write(tmp_path, "f.fcs", float_file(values, double=double, order=order))
    d = read(path)
    np.testing.assert_array_equal(d.events, values.astype(np.float32))
    assert d.warnings == []


def test_values_above_range_are_not_clipped(tmp_path):
    values = np.array([[5000.0, 262144.5], [-10.0, 1e7]])
    d = read(write(tmp_path, "big.fcs", float_file(values, ranges=[1024, 262144])))
    np.testing.assert_array_equal(d.events, values.astype(np.float32))


def test_gain_divides_linear_but_not_time(tmp_path):
    values = np.array([[100, 100, 100], [7, 9, 11]])
    path = write(tmp_path, "gain.fcs", int_file(
        values, [16] * 3, [1024] * 3, names=["FSC-A", "Time", "SSC-A"], gains=["2", "4", None],
        extra={"$TIMESTEP": "0.01"}))
    d = read(path)
    np.testing.assert_array_equal(d.events[:, 0], [50, 3.5])
    np.testing.assert_array_equal(d.events[:, 1], [100, 9])  # Time stays in ticks
    np.testing.assert_array_equal(d.events[:, 2], [100, 11])
    np.testing.assert_array_equal(d.raw, values)
    assert d.channel_meta[1]["time"] and d.channel_meta[1]["timestep"] == 0.01


def test_gain_on_float_data(tmp_path):
    values = np.array([[10.0, 3.0]], dtype=np.float32)
    d = read(write(tmp_path, "gf.fcs", float_file(values, gains=["4", "1"])))
    np.testing.assert_array_equal(d.events, [[2.5, 3.0]])
    np.testing.assert_array_equal(d.raw, values)


# ---------------------------------------------------------------- offsets and data sets


def test_blank_header_offsets_use_text(tmp_path):
    d = read(write(tmp_path, "b.fcs", int_file(INTS, [8] * 3, [256] * 3, header_data="blank")))
    np.testing.assert_array_equal(d.events, INTS)
    assert d.warnings == []


def test_shifted_header_offsets_use_text_and_warn(tmp_path):
    good = int_file(INTS, [8] * 3, [256] * 3)
    begin = int(good[26:34])
    raw = int_file(INTS, [8] * 3, [256] * 3, header_data=(begin + 3, begin + 3 + 8))
    d = read(write(tmp_path, "s.fcs", raw))
    np.testing.assert_array_equal(d.events, INTS)
    assert any("disagree" in w for w in d.warnings)


def test_header_offsets_used_when_text_offsets_wrong(tmp_path):
    kw = base_keywords(3, "I", par=3, **channel_keywords("ABC", [8] * 3, [256] * 3))
    kw["$BEGINDATA"], kw["$ENDDATA"] = "0000000060", "0000009999"  # wrong, fixed width
    data = pack_ints(INTS, [8] * 3)
    probe = build_fcs(kw, data, text_offsets=False, header_data="zero")
    begin = int(probe[18:26]) + 1  # DATA follows TEXT
    raw = build_fcs(kw, data, text_offsets=False, header_data=(begin, begin + 8))
    d = read(write(tmp_path, "h.fcs", raw))
    np.testing.assert_array_equal(d.events, INTS)
    assert any("HEADER DATA offsets used" in w for w in d.warnings)


@pytest.mark.parametrize("delta", [1, -1])
def test_enddata_off_by_one_reads_and_warns(tmp_path, delta):
    path = write(tmp_path, "e.fcs", int_file(INTS, [8] * 3, [256] * 3, enddata_delta=delta,
                                             after=b"\0" * 4))
    with pytest.warns(FCSWarning, match="off by one"):
        d = read_fcs_data(path)
    np.testing.assert_array_equal(d.events, INTS)


def test_bytes_after_data_are_normal(tmp_path):
    d = read(write(tmp_path, "a.fcs", int_file(INTS, [8] * 3, [256] * 3, after=b"CRC0" * 10)))
    np.testing.assert_array_equal(d.events, INTS)
    assert d.warnings == []


# ---------------------------------------------------------------- supplemental TEXT


def _with_stext(stext: bytes, begin: str | None = None, end: str | None = None) -> bytes:
    """INTS, then ``stext`` after DATA; $BEGINSTEXT/$ENDSTEXT point at it unless given."""
    def build(b: str, e: str) -> bytes:
        return int_file(INTS, [8] * 3, [256] * 3, after=stext,
                        extra={"$CYT": "Lab", "$BEGINSTEXT": b, "$ENDSTEXT": e})

    s0 = len(build("0" * 10, "0" * 10)) - len(stext)  # offsets of fixed width: same layout
    return build(str(s0).zfill(10) if begin is None else begin,
                 str(s0 + len(stext) - 1).zfill(10) if end is None else end)


def test_supplemental_text_adds_keywords_but_never_overrides(tmp_path):
    d = read(write(tmp_path, "s.fcs", _with_stext(b"/$SRC/blood 7/$CYT/Other/$TOT/999/")))
    np.testing.assert_array_equal(d.events, INTS)
    assert d.keywords["$SRC"] == "blood 7" and d.keywords["$CYT"] == "Lab"
    assert d.keywords["$TOT"] == "3" and d.warnings == []


def test_supplemental_text_that_is_not_text_is_ignored_with_warning(tmp_path):
    # an instrument's own binary block (a zip archive here) where $BEGINSTEXT points
    blob = b"PK\x03\x04" + bytes(range(256)) + b"/$SRC/x/"
    path = write(tmp_path, "partec.fcs", _with_stext(blob))
    with pytest.warns(FCSWarning) as caught:
        d = read_fcs_data(path)
    np.testing.assert_array_equal(d.events, INTS)
    assert "$SRC" not in d.keywords and d.keywords["$CYT"] == "Lab"
    s0 = path.stat().st_size - len(blob)
    msg = str(caught[-1].message)
    assert msg.startswith(f"{path}: supplemental TEXT ($BEGINSTEXT={s0}, $ENDSTEXT={s0 + len(blob) - 1})")
    assert "starts with b'P'" in msg and msg.endswith("ignored")


@pytest.mark.parametrize("stext,begin,end,why", [
    (b"\x03\x0c/$SRC/x/", None, None, "not the TEXT delimiter"),  # binary, not alphanumeric
    (b"|$SRC|x|", None, None, "not the TEXT delimiter"),  # another delimiter than TEXT's
    (b"/$SRC/x/", "0000000100", "0099999999", "beyond the end of the file"),
    (b"/$SRC/x/", "0000000200", "0000000100", "not a valid byte range"),
    (b"/$SRC/x/", "0000000002", "0000000009", "not a valid byte range"),  # inside the HEADER
    (b"/$SRC/x/", "twelve", "0000000100", "is not a number"),
])
def test_bad_supplemental_text_never_stops_a_read(tmp_path, stext, begin, end, why):
    d = read(write(tmp_path, "bad.fcs", _with_stext(stext, begin, end)))
    np.testing.assert_array_equal(d.events, INTS)
    assert "$SRC" not in d.keywords
    assert [w for w in d.warnings if "supplemental TEXT" in w and why in w], d.warnings


def _two_datasets() -> bytes:
    second = int_file(INTS[:2] * 2, [16] * 3, [1024] * 3, names=["X", "Y", "Z"])
    first_probe = int_file(INTS, [8] * 3, [256] * 3, nextdata=0)
    return int_file(INTS, [8] * 3, [256] * 3, nextdata=len(first_probe)) + second


def test_two_datasets_with_nextdata(tmp_path):
    path = write(tmp_path, "two.fcs", _two_datasets())
    d0, d1 = read(path), read(path, dataset=1)
    assert d0.n_datasets == d1.n_datasets == 2 and (d0.dataset, d1.dataset) == (0, 1)
    np.testing.assert_array_equal(d0.events, INTS)
    np.testing.assert_array_equal(d1.events, INTS[:2] * 2)
    assert d1.names == ["X", "Y", "Z"]
    fails(path, "data set 2 requested but the file has 2", dataset=2)


def test_nextdata_pointing_outside_is_ignored_with_warning(tmp_path):
    path = write(tmp_path, "nx.fcs", int_file(INTS, [8] * 3, [256] * 3, nextdata=10**6))
    d = read(path)
    assert d.n_datasets == 1 and any("$NEXTDATA" in w for w in d.warnings)


# ---------------------------------------------------------------- inconsistent or broken files


def test_tot_mismatch_is_an_error(tmp_path):
    kw = base_keywords(4, "I", par=3, **channel_keywords("ABC", [8] * 3, [256] * 3))
    path = write(tmp_path, "tot.fcs", build_fcs(kw, pack_ints(INTS, [8] * 3), after=b"\0" * 64))
    fails(path, r"\$TOT=4 .* hold 9 bytes")


def test_par_larger_than_keywords_is_an_error(tmp_path):
    kw = base_keywords(3, "I", par=4, **channel_keywords("ABC", [8] * 3, [256] * 3))
    fails(write(tmp_path, "par.fcs", build_fcs(kw, pack_ints(INTS, [8] * 3))), r"\$P4B is missing")


def test_par_smaller_than_data_is_an_error(tmp_path):
    kw = base_keywords(3, "I", par=2, **channel_keywords("ABC", [8] * 3, [256] * 3))
    fails(write(tmp_path, "par2.fcs", build_fcs(kw, pack_ints(INTS, [8] * 3))), r"\$TOT=3")


def test_truncated_data(tmp_path):
    raw = int_file(INTS * 100, [16] * 3, [65536] * 3)
    fails(write(tmp_path, "t.fcs", raw[:-5]), "truncated DATA")


def test_empty_file(tmp_path):
    fails(write(tmp_path, "empty.fcs", b""), "empty file")


def test_text_file_named_fcs(tmp_path):
    fails(write(tmp_path, "notes.fcs", b"sample,volume\n1,90\n2,88\n" * 5), "not an FCS file")


def test_truncated_header_and_text(tmp_path):
    raw = int_file(INTS, [8] * 3, [256] * 3)
    fails(write(tmp_path, "h.fcs", raw[:30]), "truncated HEADER")
    fails(write(tmp_path, "t.fcs", raw[:80]), "truncated TEXT")


def test_huge_tot_fails_before_allocating(tmp_path):
    kw = base_keywords(10**12, "F", par=3, **channel_keywords("ABC", [32] * 3, [1] * 3))
    fails(write(tmp_path, "huge.fcs", build_fcs(kw, b"\0" * 36)), r"\$TOT=1000000000000")


def test_unsupported_layouts(tmp_path):
    kw = base_keywords(3, "A", par=3, **channel_keywords("ABC", [8] * 3, [256] * 3))
    fails(write(tmp_path, "a.fcs", build_fcs(kw, b"1" * 9)), "ASCII data")
    kw = base_keywords(3, "I", "3,4,1,2", par=3, **channel_keywords("ABC", [8] * 3, [256] * 3))
    fails(write(tmp_path, "o.fcs", build_fcs(kw, b"1" * 9)), r"\$BYTEORD")
    kw = base_keywords(3, "I", par=3, **channel_keywords("ABC", [10] * 3, [1024] * 3))
    fails(write(tmp_path, "b.fcs", build_fcs(kw, b"1" * 12)), r"\$P1B=10")


def test_zero_events(tmp_path):
    kw = base_keywords(0, "F", par=2, **channel_keywords(["V", "HB"], [32] * 2, [1] * 2))
    for header in ("auto", "zero"):
        d = read(write(tmp_path, "z.fcs", build_fcs(kw, b"", header_data=header)))
        assert d.events.shape == (0, 2) and d.events.dtype == np.float32
        assert d.names == ["V", "HB"]


# ---------------------------------------------------------------- TEXT contents


def test_fcs20_header_offsets_only(tmp_path):
    values = np.array([[1, 2], [300, 40000]])
    kw = base_keywords(2, "I", "2,1", par=2, **channel_keywords(["FL1", "FL2"], [16] * 2, [65536] * 2))
    raw = build_fcs(kw, pack_ints(values, [16, 16], ">"), version="2.0", text_offsets=False)
    d = read(write(tmp_path, "v2.fcs", raw))
    assert d.version == "2.0" and d.warnings == []
    np.testing.assert_array_equal(d.events, values)


@pytest.mark.parametrize("version", ["3.0", "3.1"])
def test_versions_3x(tmp_path, version):
    d = read(write(tmp_path, "v3.fcs", int_file(INTS, [8] * 3, [256] * 3, version=version)))
    assert d.version == version
    np.testing.assert_array_equal(d.events, INTS)


def test_labels_absent_and_present(tmp_path):
    d = read(write(tmp_path, "nolab.fcs", int_file(INTS, [8] * 3, [256] * 3)))
    assert d.labels == [None, None, None]
    d = read(write(tmp_path, "lab.fcs", int_file(INTS, [8] * 3, [256] * 3,
                                                labels=["RBC Volume", None, "RBC Hb"])))
    assert d.labels == ["RBC Volume", None, "RBC Hb"]


def test_spillover_good_and_malformed(tmp_path):
    good = {"$SPILLOVER": "2,C1,C2,1,0.1,0.05,1"}
    d = read(write(tmp_path, "sp.fcs", int_file(INTS, [8] * 3, [256] * 3, extra=good)))
    assert d.spillover[0] == ["C1", "C2"]
    np.testing.assert_array_equal(d.spillover[1], [[1, 0.1], [0.05, 1]])
    for bad in ("3,C1,C2,1,0", "x,y", "2,C1,C2,1,a,b,1", ","):
        path = write(tmp_path, "bad.fcs", int_file(INTS, [8] * 3, [256] * 3, extra={"SPILL": bad}))
        with pytest.warns(FCSWarning, match="SPILL is malformed"):
            d = read_fcs_data(path)
        assert d.spillover is None
        np.testing.assert_array_equal(d.events, INTS)


def test_escaped_delimiter_and_other_delimiter(tmp_path):
    extra = {"$CYT": "Lab/Analyzer 1", "$FIL": "a/b/c.fcs"}
    for delim in ("/", "|", "\x0c"):
        d = read(write(tmp_path, "d.fcs", int_file(INTS, [8] * 3, [256] * 3, extra=extra, delim=delim)))
        assert d.keywords["$CYT"] == "Lab/Analyzer 1" and d.keywords["$FIL"] == "a/b/c.fcs"
        np.testing.assert_array_equal(d.events, INTS)


def test_duplicate_names_get_suffixes(tmp_path):
    d = read(write(tmp_path, "dup.fcs", int_file(INTS, [8] * 3, [256] * 3, names=["A", "A", "A"])))
    assert d.names == ["A", "A_2", "A_3"]
    assert [m["name"] for m in d.channel_meta] == ["A", "A", "A"]


# ---------------------------------------------------------------- comparison with flowio


def test_matches_flowio_on_a_log_and_gain_file(tmp_path):
    flowio = pytest.importorskip("flowio")
    rng = np.random.default_rng(0)
    values = rng.integers(0, 1024, size=(50, 3))
    path = write(tmp_path, "cmp.fcs", int_file(values, [16] * 3, [1024] * 3,
                                               amps=["0,0", "4,1", "0,0"], gains=["1", "1", "2"]))
    ours = read(path).events
    theirs = flowio.FlowData(str(path)).as_array(preprocess=True)
    np.testing.assert_allclose(ours, theirs, rtol=1e-6)


# ---------------------------------------------------------------- writing and AnnData


def _sample_keywords():
    return {"$CYT": "Analyzer/X", "$DATE": "01-JAN-2024", "$TIMESTEP": "0.01", "$P1R": "512",
            "SAMPLE ID": "patient 7", "$SPILLOVER": "2,RBC Volume,RBC Hb,1,0,0,1"}


def test_write_arrays_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    events = rng.normal(90, 10, size=(200, 3)).astype(np.float32)
    events[3, 1] = np.nan
    names, labels = ["RBC Volume", "RBC Hb", "Time"], ["vol", None, ""]
    path = write_fcs_arrays(tmp_path / "rt.fcs", events, names, labels, _sample_keywords())
    d = read(path)
    np.testing.assert_array_equal(d.events, events)
    assert d.names == names and d.labels == ["vol", None, None]
    for k, v in _sample_keywords().items():
        assert d.keywords[k.upper()] == v
    assert d.keywords["$P1R"] == "512" and d.warnings == []
    assert not list(tmp_path.glob(".*tmp"))  # the temp file was renamed


def test_written_file_reads_in_flowio(tmp_path):
    flowio = pytest.importorskip("flowio")
    events = np.arange(24, dtype=np.float32).reshape(8, 3) * 1.5
    path = write_fcs_arrays(tmp_path / "fw.fcs", events, ["A", "B", "C"], ["a", "b", "c"])
    fd = flowio.FlowData(str(path))
    np.testing.assert_array_equal(np.reshape(fd.events, (-1, 3)), events)
    assert fd.pnn_labels == ["A", "B", "C"] and fd.pns_labels == ["a", "b", "c"]


def test_write_fcs_read_fcs_round_trip_and_h5ad(tmp_path):
    anndata = pytest.importorskip("anndata")
    values = np.array([[0, 100, 5], [512, 7, 9], [1023, 1000, 11]])
    path = write(tmp_path, "src.fcs", int_file(
        values, [16] * 3, [1024] * 3, names=["RBC Volume", "RBC Hb", "Time"],
        amps=["0,0", "4,1", "0,0"], gains=["2", None, None], labels=["V", "Hb", None],
        extra={"$CYT": "Lab/1", "$TIMESTEP": "0.5"}))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FCSWarning)
        a = read_fcs(path)
    assert list(a.var_names) == ["RBC Volume", "RBC Hb", "Time"]
    assert list(a.var["marker"]) == ["V", "Hb", ""] and list(a.var["amplification"]) == ["0,0", "4,1", "0,0"]
    assert a.X.dtype == np.float32 and a.X[1, 0] == 256 and a.X[2, 2] == 11
    np.testing.assert_array_equal(a.layers["raw"], values)

    out = write_fcs(a, tmp_path / "copy.fcs")
    b = read_fcs(out)
    np.testing.assert_array_equal(b.X, a.X)
    assert list(b.var_names) == list(a.var_names) and list(b.var["marker"]) == list(a.var["marker"])
    kb = dict(zip(b.uns["fcs"]["key"], b.uns["fcs"]["value"]))
    ka = dict(zip(a.uns["fcs"]["key"], a.uns["fcs"]["value"]))
    for k in ("$CYT", "$TIMESTEP", "$P1R", "$P2R", "$P3R"):
        assert kb[k] == ka[k]
    assert "raw" not in b.layers  # already scale values: nothing decoded

    a.write_h5ad(tmp_path / "a.h5ad")
    c = anndata.read_h5ad(tmp_path / "a.h5ad")
    np.testing.assert_array_equal(c.X, a.X)
    np.testing.assert_array_equal(c.layers["raw"], a.layers["raw"])
    assert dict(zip(c.uns["fcs"]["key"], c.uns["fcs"]["value"])) == ka
    assert c.uns["fcs_dataset"] == 0 and c.uns["fcs_n_datasets"] == 1
    assert list(c.var.columns) == ["channel", "marker", "range", "bits", "amplification", "gain"]


def test_write_rejects_bad_shapes(tmp_path):
    with pytest.raises(FCSError, match="2 channel names for 3 columns"):
        write_fcs_arrays(tmp_path / "x.fcs", np.zeros((2, 3)), ["A", "B"])
    with pytest.raises(FCSError, match="2-D"):
        write_fcs_arrays(tmp_path / "x.fcs", np.zeros(3), ["A"])
    assert not (tmp_path / "x.fcs").exists()


def test_import_stays_light():
    code = ("import sys, flowrbc.io.fcs, flowrbc.io.channels; "
            "print(sorted(m for m in ('anndata', 'pandas', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_reads_a_file_written_by_flowio(tmp_path):
    flowio = pytest.importorskip("flowio")
    events = np.array([[1.5, 2.0], [3.25, -4.0], [5.0, 6e5]], dtype=np.float32)
    path = tmp_path / "byflowio.fcs"
    with open(path, "wb") as fh:
        flowio.create_fcs(fh, events.ravel().tolist(), ["FSC-A", "SSC-A"], ["fsc", "ssc"],
                          metadata_dict={"CYT": "Lab/2"})
    d = read(path)
    np.testing.assert_array_equal(d.events, events)
    assert d.names == ["FSC-A", "SSC-A"] and d.labels == ["fsc", "ssc"]
    assert d.keywords["$CYT"] == "Lab/2" and d.warnings == []
