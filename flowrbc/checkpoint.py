"""Checkpoints: one ``model.pt`` that rebuilds and applies a model alone, loaded safely.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts saved with
``torch.save``; it is read back with ``torch.load(weights_only=True)`` only, so loading never
executes code from the file. A SHA-256 digest over the weights and the metadata detects
tampering that still unpickles; anything else wrong gives one ``CheckpointError`` line.

Keys of ``model.pt``: ``format``, ``format_version``, ``model_config`` (ModelConfig.to_dict),
``train_config``, ``state_dict``, ``channels`` (list of [role, channel name] in input order),
``scaler`` (per-feature log flag, mean, std), ``targets``, ``covariates``, ``index_inputs`` and
``index_models`` (``flowrbc.hybrid``; None when absent), ``calibration``, ``feature_ranges``,
``moments`` (training moment-feature mean/sd for QC), ``healthy_reference`` (the training
cohort's healthy cell density and histogram bands, for reports; ``flowrbc.report.reference``),
``explain_reference`` (healthy training cells, the reference of ``flowrbc.explain``; absent in
checkpoints written before it),
``precision`` (what the model was validated in, "bf16" or "fp32" (``flowrbc.precision``), and
predicts in by default; absent in checkpoints written before it: "auto"), ``read_size`` (cells
per prediction set; None: every cell in one set, ``flowrbc.decoder_fit``; absent in
checkpoints written before it: ``train_config["set_size"]``),
``metrics``, ``versions``, ``fingerprint`` (of the training data), ``complete`` (False while
training is under way), ``digest``.

An older format is read through ``MIGRATIONS``, one step per version, after its digest is
checked, so that ``flowrbc.predictor.Predictor.load`` reads one layout only.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from flowrbc.errors import CheckpointError

FORMAT = "flowrbc-checkpoint"
FORMAT_VERSION = 2  # 2: every key a predictor reads is present (``MIGRATIONS``)
REQUIRED = ("model_config", "state_dict", "channels", "scaler")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # the permissions of a file written the plain way, not mkstemp's 0600
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


def _digest(payload: dict[str, Any]) -> str:
    """SHA-256 over the metadata (canonical JSON) and every tensor's name, dtype, shape, bytes."""
    h = hashlib.sha256()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "digest")}
    h.update(json.dumps(_jsonable(meta), sort_keys=True).encode())
    for name in sorted(payload["state_dict"]):
        t = payload["state_dict"][name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, float) and obj != obj:
        return "nan"
    return obj


def _plain(obj: Any) -> Any:
    """numpy values -> Python numbers and lists (``weights_only`` loading accepts those)."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    if type(obj).__module__ == "numpy":
        return obj.tolist()
    if isinstance(obj, str) and type(obj) is not str:  # e.g. torch.__version__
        return str(obj)
    return obj


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Save ``payload`` (see module doc) atomically, adding format tag and digest."""
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: cannot save a checkpoint without {', '.join(missing)}")
    payload = _plain(dict(payload, format=FORMAT, format_version=FORMAT_VERSION))
    payload["state_dict"] = {k: v.detach().to("cpu") for k, v in payload["state_dict"].items()}
    payload["digest"] = _digest(payload)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def _reason(exc: Exception) -> str:
    """The informative line of a torch.load failure (the unpickler's, when there is one)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in lines:
        if "WeightsUnpickler error" in ln or "Unsupported global" in ln:
            return ln.split("Please use")[0].strip()[:200]
    return (lines[0] if lines else type(exc).__name__)[:200]


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and verify a ``model.pt``; any problem is one ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a foreign pickle's protocol warning: the error says it
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, foreign pickle, code objects refused, ...
        raise CheckpointError(f"{path}: not a readable flowrbc checkpoint ({_reason(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a flowrbc checkpoint")
    version = payload.get("format_version")
    if version not in MIGRATIONS and version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format {version} is not supported (this flowrbc reads formats "
            f"{', '.join(map(str, sorted([*MIGRATIONS, FORMAT_VERSION])))})"
        )
    missing = [k for k in REQUIRED if k not in payload]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    if payload.get("digest") != _digest(payload):
        raise CheckpointError(f"{path}: checkpoint content does not match its digest (modified or corrupted)")
    while payload["format_version"] != FORMAT_VERSION:
        payload = MIGRATIONS[payload["format_version"]](payload)
    return payload


def _from_version_1(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 1 could leave out what its writer did not have yet: the targets and covariates of
    the earliest runs, the index inputs and index members, and in the members' state whether
    they read the shape features (no: moment features only) and the set model's weight (1/3).
    Its ``train_config["cells"]`` is format 2's ``set_size``."""
    out = dict(payload, format_version=2)
    out.setdefault("targets", {})
    out.setdefault("covariates", None)
    out.setdefault("index_inputs", None)
    out["train_config"] = dict(payload.get("train_config") or {})
    out["train_config"]["set_size"] = out["train_config"].pop("cells", 1000)
    index = payload.get("index_models")
    out["index_models"] = None if not index else dict({"shape": False, "set_weight": 1.0 / 3.0}, **index)
    return out


MIGRATIONS = {1: _from_version_1}  # format version -> the step to the next one


def save_resume_state(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Save the loop state for ``--resume`` (``last.pt``) atomically."""
    buffer = io.BytesIO()
    torch.save(dict(state, format=FORMAT + "-resume"), buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_resume_state(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no resume state here (was the run started with this --out?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"{path}: unreadable resume state ({type(exc).__name__})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT + "-resume":
        raise CheckpointError(f"{path}: not a flowrbc resume state")
    return state


def update_latest(run_dir: str | os.PathLike) -> Path:
    """Point ``<runs>/latest`` at ``run_dir`` (a relative symlink, replaced atomically; a text
    file holding the directory name where symlinks are not possible)."""
    run_dir = Path(run_dir).resolve()
    latest = run_dir.parent / "latest"
    tmp = run_dir.parent / f".latest.{os.getpid()}.tmp"
    try:
        if tmp.is_symlink() or tmp.exists():
            tmp.unlink()
        os.symlink(run_dir.name, tmp, target_is_directory=True)
        if latest.is_dir() and not latest.is_symlink():
            raise OSError("latest is a directory")
        os.replace(tmp, latest)
    except OSError:
        with _suppress():
            tmp.unlink()
        if not (latest.is_dir() and not latest.is_symlink()):
            atomic_write_text(latest, run_dir.name + "\n")
    return latest


def resolve_model_path(path: str | os.PathLike) -> Path:
    """``runs/latest/model.pt`` through a symlink or a pointer file; a directory means its
    ``model.pt``."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.exists() and path.parent.name == "latest" and path.parent.is_file():
        target = path.parent.read_text().strip()
        path = path.parent.parent / target / path.name
    return path
