"""``flowrbc info`` on good and bad files."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from flowrbc.cli import app
from flowrbc.io.fcs import write_fcs_arrays
from tests.io.fcs_builders import int_file

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
