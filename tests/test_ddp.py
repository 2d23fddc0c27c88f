"""Data-parallel training: two CPU processes (gloo) under torchrun on a tiny cohort."""

import json
import os
import subprocess
import sys

from flowrbc.io.cohort import synthetic_cohort, write_cohort


def test_two_process_gloo_run(tmp_path):
    write_cohort(synthetic_cohort(n_patients=60, n_cells=48, seed=2), tmp_path / "cohort.h5ad")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "flowrbc", "train", str(tmp_path / "cohort.h5ad"), "--epochs", "2", "--width", "16",
           "--depth", "1", "--set-size", "32", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "run")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert len(metrics["history"]) == 2
    assert metrics["test"]["model"]["hematocrit"]["mse"] > 0
