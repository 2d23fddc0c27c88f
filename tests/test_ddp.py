"""Data-parallel training: the ranks' shards of each epoch, and two CPU processes (gloo) under
torchrun on a tiny cohort."""

import json
import os
import socket
import subprocess
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flowrbc.io.builtin import synthetic_cohort
from flowrbc.io.cohort import write_cohort
from flowrbc.train import epoch_shard


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gather_shards(rank: int, world: int, port: int, n: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    train_idx = torch.arange(100, 100 + n)
    epochs = []
    for epoch in range(2):
        batches = epoch_shard(train_idx, epoch, 7, rank, world, batch_size=4)
        mine = torch.cat(batches)
        everyone = [torch.empty_like(mine) for _ in range(world)]
        dist.all_gather(everyone, mine)
        steps = [torch.zeros(1, dtype=torch.long) for _ in range(world)]
        dist.all_gather(steps, torch.tensor([len(batches)]))
        epochs.append({"samples": [t.tolist() for t in everyone], "steps": [int(s) for s in steps]})
    if rank == 0:
        with open(out, "w") as f:
            json.dump(epochs, f)
    dist.destroy_process_group()


def _shards(tmp_path, n: int, world: int = 2) -> list[dict]:
    out = tmp_path / f"shards_{n}.json"
    mp.spawn(_gather_shards, args=(world, _free_port(), n, str(out)), nprocs=world, join=True)
    return json.loads(out.read_text())


def test_ranks_take_disjoint_shards_that_cover_each_epoch(tmp_path):
    epochs = _shards(tmp_path, 40)
    for e in epochs:
        a, b = (set(s) for s in e["samples"])
        assert not a & b and a | b == set(range(100, 140))
        assert e["steps"][0] == e["steps"][1] == 5  # 20 samples a rank in batches of 4
    assert epochs[0]["samples"] != epochs[1]["samples"]  # a new permutation each epoch


def test_uneven_shards_keep_the_ranks_in_step(tmp_path):
    for e in _shards(tmp_path, 37):
        a, b = e["samples"]
        assert set(a) | set(b) == set(range(100, 137)) and len(set(a) & set(b)) == 1  # one dealt twice
        assert len(a) == len(b) == 19 and e["steps"][0] == e["steps"][1]


def test_two_process_gloo_run(tmp_path):
    write_cohort(synthetic_cohort(n_patients=60, n_cells=48, seed=2), tmp_path / "cohort.h5ad")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.getcwd())
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
           "-m", "flowrbc", "train", str(tmp_path / "cohort.h5ad"), "--epochs", "2", "--width", "16",
           "--depth", "1", "--set-size", "32", "--batch-size", "8", "--device", "cpu", "--out", str(tmp_path / "run")]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert len(metrics["history"]) == 2
    assert metrics["test"]["model"]["hematocrit"]["mse"] > 0
