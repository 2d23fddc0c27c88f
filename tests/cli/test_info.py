"""``flowrbc info`` on good and bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from flowrbc.cli import app
from flowrbc.cli._format import number
from flowrbc.io.fcs import write_fcs_arrays
from tests.io.fcs_builders import fc500_like, int_file

runner = CliRunner()


def _good(tmp_path):
    ev = np.array([[90.0, 30.0, 1], [80.0, np.nan, 2], [100.0, 28.0, 3]], dtype=np.float32)
    return write_fcs_arrays(tmp_path / "good.fcs", ev, ["RBC Volume", "RBC Hb", "Time"],
                            ["vol", None, None], {"$CYT": "Analyzer X"})


def test_info_table(tmp_path):
    res = runner.invoke(app, ["info", str(_good(tmp_path))], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    for text in ("RBC Volume", "RBC Hb", "Time", "Analyzer X", "events: 3", "NaN/inf: 1",
                 "volume = RBC Volume", "hemoglobin = RBC Hb"):
        assert text in res.output


def test_info_json(tmp_path):
    res = runner.invoke(app, ["info", str(_good(tmp_path)), "--json"])
    assert res.exit_code == 0, res.output
    s = json.loads(res.output)
    assert [c["name"] for c in s["channels"]] == ["RBC Volume", "RBC Hb", "Time"]
    assert s["events"] == 3 and s["events_with_non_finite"] == 1 and s["n_datasets"] == 1
    assert s["channels"][0]["min"] == 80.0 and s["channels"][0]["median"] == 90.0
    assert s["channels"][1]["non_finite"] == 1 and s["roles"]["volume"] == "RBC Volume"


def test_info_reports_warnings_and_datasets(tmp_path):
    ints = np.array([[1, 2], [3, 4]])
    bad_spill = {"$SPILLOVER": "2,C1"}
    first = int_file(ints, [16, 16], [1024, 1024], nextdata=0, extra=bad_spill)
    raw = int_file(ints, [16, 16], [1024, 1024], nextdata=len(first),
                   extra=bad_spill) + int_file(ints * 3, [16, 16], [1024, 1024])
    (tmp_path / "two.fcs").write_bytes(raw)
    res = runner.invoke(app, ["info", str(tmp_path / "two.fcs"), "--json", "--dataset", "1"])
    s = json.loads(res.output)
    assert s["dataset"] == 1 and s["n_datasets"] == 2 and s["channels"][0]["max"] == 9.0
    res = runner.invoke(app, ["info", str(tmp_path / "two.fcs"), "--json"])
    assert any("SPILLOVER is malformed" in w for w in json.loads(res.output)["warnings"])


def test_info_bad_files(tmp_path):
    (tmp_path / "notes.fcs").write_text("not flow data\n")
    (tmp_path / "empty.fcs").write_bytes(b"")
    for name in ("notes.fcs", "empty.fcs", "missing.fcs"):
        res = runner.invoke(app, ["info", str(tmp_path / name)])
        assert res.exit_code == 1
        assert name in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["info", str(_good(tmp_path)), "--dataset", "3"])
    assert res.exit_code == 1 and "data set 3 requested" in res.output


def test_info_lists_every_data_set_of_an_fc500_like_file(tmp_path):
    raw, words = fc500_like(n=200)
    path = tmp_path / "fc500.lmd"
    path.write_bytes(raw)
    res = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert ("data sets: --dataset 0: FCS 2.0, 200 events, 4 parameters (shown); "
            "--dataset 1: FCS 3.0, 200 events, 6 parameters") in res.output
    assert "FCS 2.0" in res.output and "off by one" in res.output
    s = json.loads(runner.invoke(app, ["info", str(path), "--json"]).output)
    assert [c["bits"] for c in s["channels"]] == [10] * 4
    assert s["channels"][0]["max"] == float((words[:, 0] & 1023).max())
    assert [(d["version"], d["events"], d["parameters"]) for d in s["datasets"]] == [("2.0", 200, 4), ("3.0", 200, 6)]
    s = json.loads(runner.invoke(app, ["info", str(path), "--json", "--dataset", "1"]).output)
    assert s["fcs_version"] == "3.0" and len(s["channels"]) == 6


def test_info_on_an_unreadable_data_set_says_which_reads(tmp_path):
    path = tmp_path / "hist.lmd"
    path.write_bytes(fc500_like(n=20, first={"$MODE": "C"})[0])
    res = runner.invoke(app, ["info", str(path)], env={"COLUMNS": "400"})
    assert res.exit_code == 1 and "Traceback" not in res.output
    assert "$MODE=C is not supported" in res.output and "the file holds data sets 0 (FCS 2.0, 20 events" in res.output
    assert "--dataset 1 reads" in res.output
    assert runner.invoke(app, ["info", str(path), "--dataset", "1"]).exit_code == 0
    assert runner.invoke(app, ["info", str(path), "--dataset", "-1"]).exit_code == 2  # typer: not an index


_NAMES = ["FSC-A", "FSC-H", "FSC-W", "SSC-A", "SSC-H", "SSC-W", "FITC-A", "PE-A", "PerCP-Cy5-5-A",
          "PE-Cy7-A", "APC-A", "APC-Cy7-A", "BV421-A", "BV510-A", "BV605-A", "Time"]
_LABELS = [None] * 6 + ["CD235a glycophorin A", "CD71 transferrin receptor", "Viability dye", "CD45",
                        "Ki-67", "CD3", "CD19", "CD14", "HLA-DR", None]


def _cytometer16(tmp_path):
    rng = np.random.default_rng(0)
    ev = rng.uniform(-1234.567, 262143.9, (400, 16))  # (events, channels) 18-bit instrument units
    ev[:, 12] *= 1e-9  # tiny and huge magnitudes: engineering notation
    ev[:, 13] *= 16384.0
    ev[:, 15] = np.arange(400) * 12.25
    kw = {f"$P{i}R": "262144" for i in range(1, 17)} | {"$P14R": "4294967296", "$CYT": "LSRFortessa X-20"}
    return write_fcs_arrays(tmp_path / "cytometer16.fcs", ev.astype(np.float32), _NAMES, _LABELS, kw)


def test_info_piped_at_80_columns_shows_every_number(tmp_path):
    path = _cytometer16(tmp_path)
    env = {**os.environ, "COLUMNS": "80"}
    cmd = [sys.executable, "-m", "flowrbc", "info", str(path)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stdout  # a pipe, no tty
    full = json.loads(subprocess.run(cmd + ["--json"], capture_output=True, text=True, env=env, check=True).stdout)
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80
    assert full["channels"][13]["range"] == 4294967296.0  # --json keeps every digit
    rows = {int(t[0]): t for t in (line.split() for line in out.splitlines()) if t and t[0].isdigit() and len(t) >= 9}
    assert sorted(rows) == list(range(1, 17))
    for i, c in enumerate(full["channels"], start=1):
        want = [number(c["range"]), str(c["bits"]), c["amplification"], number(c["gain"]),
                number(c["min"]), number(c["median"]), number(c["max"])]
        assert rows[i][-7:] == want, (c["name"], rows[i])
    assert "262.1k" in rows[1] and "4.295G" in rows[14] and any("e-6" in v for v in rows[13])


def test_info_names_an_uncalibrated_channel_and_its_scale(tmp_path):
    from tests.instrument_units import FACTORS, to_instrument_units

    src = _good(tmp_path)
    path = to_instrument_units(src, tmp_path / "cyt.fcs")
    mapped = ["--channel", "volume=FSC-A", "--channel", "hemoglobin=SSC-A"]
    res = runner.invoke(app, ["info", str(path), *mapped], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "channel 'FSC-A' (volume) has median" in res.output and "--scale volume=FACTOR" in res.output
    scales = ["--scale", f"volume={FACTORS['volume']}", "--scale", f"hemoglobin={FACTORS['hemoglobin']}"]
    res = runner.invoke(app, ["info", str(path), *mapped, *scales, "--json"])
    units = json.loads(res.output)["units"]
    assert units["volume"]["channel"] == "FSC-A" and units["volume"]["scale"] == FACTORS["volume"]
    assert units["volume"]["median"] == pytest.approx(90.0, rel=1e-5) and units["volume"]["problem"] is None
    assert units["hemoglobin"]["median"] == pytest.approx(29.0, rel=1e-5)
    res = runner.invoke(app, ["info", str(path), *mapped, *scales], env={"COLUMNS": "200"})
    assert "volume = FSC-A ×0.0009 (median 90 fL)" in res.output and "warning" not in res.output
    for bad, why in ((["--scale", "volume=-2"], "positive FACTOR"), (["--scale", "volume"], "ROLE=FACTOR"),
                     (["--scale", "platelets=2"], "unknown role"), (["--channel", "volume=FL9"], "'FL9'")):
        res = runner.invoke(app, ["info", str(path), *mapped, *bad])
        assert res.exit_code == 1 and why in res.output and "Traceback" not in res.output, res.output
