"""The speed harness (benchmarks/speed.py) runs end to end at toy sizes and writes its JSON.

No timing is asserted: only that every record carries finite, positive measurements.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "benchmarks" / "speed.py"


def _run(tmp_path, name, *args):
    out = tmp_path / f"{name}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SPEED), "--toy", "--json", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def _positive(record, keys):
    assert "error" not in record, record["error"]
    for key in keys:
        assert math.isfinite(record[key]) and record[key] > 0, (key, record[key])


def test_grid_measures_flowrbc_and_the_papers_baseline(tmp_path):
    data = _run(tmp_path, "grid", "--models", "deepsets++-25", "--sizes", "16", "--threads", "1")
    assert data["meta"]["mode"] == "grid" and data["meta"]["device"] == "cpu"
    records = data["records"]
    assert {(r["impl"], r["phase"]) for r in records} == {(i, p) for i in ("flowrbc", "papers") for p in ("train", "infer")}
    for r in records:
        _positive(r, ("sets_per_s", "step_s", "flops_per_set", "matmul_flop_s", "roofline_sets_per_s", "efficiency"))
        assert r["peak_gib"] >= 0 and len(r["load_before"]) == 3
    flowrbc = [r for r in records if r["impl"] == "flowrbc"]
    assert all(math.isfinite(r["speed_ratio"]) and r["speed_ratio"] > 0 for r in flowrbc)


def test_scaling_streams_the_slot_set_encoder(tmp_path):
    data = _run(tmp_path, "scaling", "--scaling", "--scaling-models", "slot_set-stream",
                "--scaling-sizes", "300", "--threads", "1")
    (r,) = data["records"]
    assert data["meta"]["mode"] == "scaling" and r["model"] == "slot_set-stream" and r["n"] == 300
    _positive(r, ("seconds", "cells_per_s", "flops_per_set", "matmul_flop_s", "roofline_s", "efficiency"))
