"""The one input path (``flowrbc.io.sample``): ``flowrbc ingest`` stores exactly the cells and
counts that ``load_sample`` (what ``flowrbc predict`` and the report read) gives a file."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from flowrbc.errors import ChannelError
from flowrbc.io.fcs import write_fcs_arrays
from flowrbc.io.ingest import ingest_fcs
from flowrbc.io.sample import gate_sample, load_sample, read_sample
from tests.io.fcs_builders import fc500_like

NAMES = ["RBC Volume", "RBC Hb"]
FACTORS = {"volume": 0.1, "hemoglobin": 0.05}  # a file stored in 0.1 fL and 0.05 pg units


def _events(rng, cells: int, debris: int = 0, nonfinite: int = 0) -> np.ndarray:
    """(n, 2) float32 [volume fL, hemoglobin pg], shuffled: red cells, then events the RBC gate
    drops (platelet-sized debris, one oversized event) and NaN events."""
    v = rng.normal(90, 9, cells)
    red = np.column_stack([v, v * rng.normal(33.5, 2.0, cells) / 100])
    small = np.column_stack([rng.uniform(2, 15, debris), rng.uniform(0.5, 2, debris)])
    out = np.concatenate([red, small, [[400.0, 30.0]], np.full((nonfinite, 2), np.nan)])
    return out[rng.permutation(len(out))].astype(np.float32)


def _folder(root, factors: dict[str, float] | None = None):
    """Two files and their clinical table: a.fcs raises every sample-level QC flag, b.fcs none."""
    rng = np.random.default_rng(0)
    root.mkdir()
    stored = np.array([1 / (factors or {}).get(r, 1.0) for r in ("volume", "hemoglobin")])
    files = {"a.fcs": _events(rng, 150, debris=60, nonfinite=3), "b.fcs": _events(rng, 500, debris=10)}
    means = {}
    for name, x in files.items():
        write_fcs_arrays(root / name, (x * stored).astype(np.float32), NAMES)
        means[name] = np.nanmean(x[(x[:, 0] > 20) & (x[:, 0] < 250)], axis=0)  # about the gated cells' MCV, MCH
    pd.DataFrame({"sample_id": ["A", "B"], "file": list(files), "hematocrit": [40.0, 42.0],
                  "mcv": [means[f][0] for f in files], "mch": [means[f][1] for f in files]}
                 ).to_csv(root / "clinical.csv", index=False)
    return root


@pytest.mark.parametrize("scaling", ["none", "given", "clinical"])
def test_ingest_stores_the_cells_counts_and_flags_load_sample_gives(tmp_path, scaling):
    root = _folder(tmp_path / "fcs", None if scaling == "none" else FACTORS)
    result = ingest_fcs(root, root / "clinical.csv", scales=FACTORS if scaling == "given" else None,
                        scale_from_clinical=scaling == "clinical")
    cohort = result.cohort
    assert list(cohort.samples.index) == ["A", "B"]
    for i in range(cohort.n_samples):
        row = cohort.samples.iloc[i]
        scales = {r: float(row[f"scale_{r}"]) for r in FACTORS if f"scale_{r}" in row.index}
        sample = load_sample(root / row["file"], scales=scales)
        assert sample.cells.dtype == np.float64 and cohort.X.dtype == np.float32
        np.testing.assert_array_equal(cohort.sample_cells(i), sample.cells.astype(np.float32))
        assert {k: int(row[k]) for k in sample.qc} == sample.qc
        stored_flags = [k.removeprefix("flag_") for k in row.index if k.startswith("flag_") and row[k]]
        assert stored_flags == sample.qc_flags()
    a = load_sample(root / "a.fcs", scales=None if scaling == "none" else FACTORS)
    assert a.qc == {"n_events": 214, "n_gated": 150, "n_nonfinite": 3}
    assert a.qc_flags() == ["too_few_cells", "many_gated_out", "nonfinite_events"]
    assert load_sample(root / "b.fcs", scales=None if scaling == "none" else FACTORS).qc_flags() == []


def test_sample_keeps_role_order_channels_and_keywords(tmp_path):
    x = _events(np.random.default_rng(1), 300)
    path = tmp_path / "swapped.fcs"
    write_fcs_arrays(path, x[:, ::-1], ["Hb", "FSC-A"], keywords={"FLOWRBC_SEX": "F"})
    raw = read_sample(path, overrides={"volume": "FSC-A"})
    assert raw.roles == ["volume", "hemoglobin"] and raw.channels == ["FSC-A", "Hb"]
    sample = gate_sample(raw)
    np.testing.assert_array_equal(sample.cells, load_sample(path, overrides={"volume": "FSC-A"}).cells)
    assert sample.cells.shape == (300, 2) and sample.cells[:, 0].mean() > 80  # volume first
    assert sample.keywords["FLOWRBC_SEX"] == "F" and sample.scales == {}
    assert "cells" not in repr(sample)


def test_unusable_files_are_one_line_errors_naming_the_file(tmp_path):
    x = _events(np.random.default_rng(2), 300)
    scatter = tmp_path / "scatter.fcs"
    write_fcs_arrays(scatter, x, ["FSC-A", "SSC-A"])
    with pytest.raises(ChannelError, match=r"scatter.fcs: no channel found for volume, hemoglobin"):
        read_sample(scatter)
    with pytest.raises(ChannelError, match=r"scatter.fcs: lacks the model's channels volume \('RBC Volume'\)"):
        read_sample(scatter, model_channels=[("volume", "RBC Volume"), ("hemoglobin", "RBC Hb")])
    debris = tmp_path / "debris.fcs"
    write_fcs_arrays(debris, np.full((20, 2), 5.0, np.float32), NAMES)
    with pytest.raises(ChannelError, match=r"debris.fcs: no events pass the RBC gate \(20 events\)") as info:
        load_sample(debris)
    assert "\n" not in str(info.value)


def test_one_refusal_names_both_channels_and_its_factors_read_the_file(tmp_path):
    """FSC-A 11x and SSC-A 31x the model's fL and pg: one refusal names both, and the
    factors it suggests, given together, read the file."""
    x = _events(np.random.default_rng(3), 400)
    path = tmp_path / "cyto.fcs"
    write_fcs_arrays(path, x * np.float32([11, 31]), ["FSC-A", "SSC-A"])
    mapped = {"volume": "FSC-A", "hemoglobin": "SSC-A"}
    trained = {"volume": {"p001": 60.0, "p999": 130.0}, "hemoglobin": {"p001": 18.0, "p999": 45.0}}
    with pytest.raises(ChannelError) as info:
        load_sample(path, overrides=mapped, trained_ranges=trained)
    msg = str(info.value)
    assert msg.startswith(f"{path}: channel 'FSC-A' (volume) has median ") and "\n" not in msg
    assert "outside the 60-130 fL" in msg and "channel 'SSC-A' (hemoglobin)" in msg
    assert "far outside the 18-45 pg" in msg
    factors = {role: float(f) for role, f in re.findall(r"--scale (\w+)=FACTOR \(about ([\d.e-]+)", msg)}
    assert set(factors) == {"volume", "hemoglobin"}
    sample = load_sample(path, overrides=mapped, trained_ranges=trained, scales=factors)
    assert len(sample.cells) == 400 and sample.scales == factors


@pytest.mark.filterwarnings("ignore:.*off by one")  # data set 0's $ENDDATA, as the FC500 writes it
def test_the_data_set_asked_for_is_the_one_read(tmp_path):
    x = _events(np.random.default_rng(4), 300)
    single = tmp_path / "rbc.fcs"
    write_fcs_arrays(single, x, NAMES, keywords={"FLOWRBC_SEX": "F"})
    path = tmp_path / "two.lmd"
    path.write_bytes(fc500_like(second=single.read_bytes())[0])  # data set 0: scatter, no RBC channels
    with pytest.raises(ChannelError, match="two.lmd: no channel found for volume"):
        load_sample(path)
    sample = load_sample(path, dataset=1)
    np.testing.assert_array_equal(sample.cells, load_sample(single).cells)
    assert sample.keywords["FLOWRBC_SEX"] == "F"
