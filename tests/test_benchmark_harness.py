"""The speed harness (``benchmarks/speed.py``) still runs end to end on a toy model.

Benchmarks are run by hand, outside the suite. This only keeps the harness working as the
models' API moves: every measurement comes back without an error and with its fields, and
the papers'-style baseline is the same model as flowrbc's. No measured figure is checked:
timings of a toy run on a shared machine mean nothing.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "benchmarks" / "speed.py"


def _run(tmp_path, *args):
    out = tmp_path / "speed.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, str(SPEED), "--toy", "--threads", "1", "--json", str(out), *args],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    for record in data["records"]:
        assert "error" not in record, record["error"]
    return data


def test_grid_runs_flowrbc_and_the_papers_baseline(tmp_path):
    data = _run(tmp_path, "--models", "deepsets-3", "--sizes", "16")
    assert data["meta"]["mode"] == "grid"
    records = data["records"]
    assert {(r["impl"], r["phase"]) for r in records} == {
        (impl, phase) for impl in ("flowrbc", "papers") for phase in ("train", "infer")
    }
    for r in records:
        assert {"sets_per_s", "peak_gib", "flops_per_set", "roofline_sets_per_s", "efficiency"} <= set(r)
    assert len({r["params"] for r in records}) == 1  # the baseline is the same architecture


def test_scaling_streams_the_slot_set_encoder(tmp_path):
    data = _run(tmp_path, "--scaling", "--scaling-models", "slot_set-stream", "--scaling-sizes", "300")
    (r,) = data["records"]
    assert data["meta"]["mode"] == "scaling" and (r["model"], r["n"]) == ("slot_set-stream", 300)
    assert {"seconds", "peak_gib", "flops_per_set", "roofline_s", "efficiency"} <= set(r)
