"""Checkpoints round-trip; truncated, tampered, foreign and malicious files are refused."""

import os
import pickle

import pytest
import torch

from flowrbc.checkpoint import (
    load_checkpoint,
    resolve_model_path,
    save_checkpoint,
    update_latest,
)
from flowrbc.errors import CheckpointError


def _payload():
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    return {
        "model_config": {"family": "deepsets", "width": 4},
        "state_dict": net.state_dict(),
        "channels": [["volume", "RBC Volume"], ["hemoglobin", "RBC Hb"]],
        "scaler": {"mean": [1.0, 2.0], "std": [0.5, 0.25], "log": [True, True]},
        "metrics": {"mse": 1.5},
    }


def test_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", _payload())
    loaded = load_checkpoint(path)
    assert loaded["channels"] == _payload()["channels"]
    assert loaded["scaler"] == _payload()["scaler"]
    for k, v in _payload()["state_dict"].items():
        assert torch.equal(loaded["state_dict"][k], v)
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]  # atomic: no leftovers


def test_truncated_file_refused(tmp_path):
    path = save_checkpoint(tmp_path / "model.pt", _payload())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="model.pt: not a readable flowrbc checkpoint"):
        load_checkpoint(path)


def test_modified_weights_refused(tmp_path):
    payload = _payload()
    save_checkpoint(tmp_path / "model.pt", payload)
    # re-save with a changed weight but the old digest: a plausible file, not the trained one
    raw = torch.load(tmp_path / "model.pt", weights_only=True)
    raw["state_dict"]["weight"][0, 0] += 1.0
    torch.save(raw, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="does not match its digest"):
        load_checkpoint(tmp_path / "model.pt")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_code_in_checkpoint_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"format": "flowrbc-checkpoint", "x": _Evil()}, tmp_path / "evil.pt")
    with open(tmp_path / "evil.pkl", "wb") as fh:
        pickle.dump(_Evil(), fh)
    for name in ("evil.pt", "evil.pkl"):
        with pytest.raises(CheckpointError, match=f"{name}: not a readable flowrbc checkpoint"):
            load_checkpoint(tmp_path / name)
    assert not (tmp_path / "pwned").exists()


def test_foreign_and_text_files_refused(tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="other.pt: not a flowrbc checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "notes.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt"):
        load_checkpoint(tmp_path / "notes.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")


def test_latest_points_to_newest_run(tmp_path):
    for name in ("run-a", "run-b"):
        save_checkpoint(tmp_path / name / "model.pt", _payload())
        update_latest(tmp_path / name)
    resolved = resolve_model_path(tmp_path / "latest" / "model.pt")
    assert resolved.resolve() == (tmp_path / "run-b" / "model.pt").resolve()
