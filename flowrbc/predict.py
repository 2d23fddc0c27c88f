"""Checkpoint -> predictions for FCS files: hematocrit ± conformal interval, calibrated anemia
probability, QC flags. The fast path: numpy, torch and flowrbc's numpy-only readers; never
anndata, scanpy, scikit-learn, pandas or matplotlib. The model inputs it shares with
training live in ``flowrbc.inputs``.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowrbc.errors import ChannelError, CheckpointError, FlowrbcError
from flowrbc.inputs import (DRAWS, FeatureScaler, decode_outputs, draw_sets,  # noqa: F401 (shared)
                            predict_sets, sets_per_sample)

# ----------------------------------------------------------------------------- checkpoints


@dataclass
class LoadedModel:
    """A checkpoint ready to predict: the model (eval mode) and everything to apply it."""

    model: torch.nn.Module
    path: Path
    family: str
    channels: list[tuple[str, str]]  # (role, channel name) in input order
    scaler: FeatureScaler
    targets: dict[str, dict]
    cells: int  # set size used in training
    calibration: dict[str, dict]
    ranges: dict[str, dict]
    moments: dict[str, Any]
    complete: bool
    device: torch.device
    covariates: Any = None  # flowrbc.covariates.CovariateEncoder; names empty: none
    index: Any = None  # flowrbc.hybrid.IndexModels (the predictor's index members); None: set model alone
    index_inputs: Any = None  # flowrbc.hybrid.IndexInputs: the set model's decoder reads the index features

    def index_features(self, volume: np.ndarray, hemoglobin: np.ndarray, offsets: np.ndarray,
                       moments: np.ndarray | None = None) -> np.ndarray | None:
        """What the index members and the index inputs read from cells split by ``offsets``
        (``moments``: the moment features when the caller has them) -> (n_samples, F), or None
        for a checkpoint with neither."""
        if self.index is None and self.index_inputs is None:
            return None
        if self.index is not None and not self.index.shape:  # written before the shape features: no index inputs
            return self.index.features(volume, hemoglobin, offsets, moments)
        from flowrbc.hybrid import index_features

        return index_features(volume, hemoglobin, offsets, None if moments is None else (moments, []))[0]

    def decoder_inputs(self, cov: torch.Tensor | None, F: np.ndarray | None) -> torch.Tensor | None:
        """Encoded covariates (n, k) or None, and ``index_features`` F -> what the set model's
        decoder reads (``flowrbc.inputs.decoder_inputs``)."""
        if self.index_inputs is None:
            return cov
        from flowrbc.inputs import decoder_inputs

        k = len(self.covariates.names) if self.covariates is not None else 0
        return decoder_inputs(cov, torch.from_numpy(self.index_inputs.encode(F)).to(self.device), k)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> LoadedModel:
    """Load ``model.pt`` (safely: weights only) and rebuild its model."""
    from flowrbc.checkpoint import load_checkpoint
    from flowrbc.covariates import CovariateEncoder
    from flowrbc.hybrid import IndexInputs, IndexModels
    from flowrbc.models import ModelConfig, build_model

    payload = load_checkpoint(path)
    try:
        config = ModelConfig.from_dict(payload["model_config"])
        model = build_model(config)
        model.load_state_dict(payload["state_dict"])
        index = IndexModels.from_state(payload.get("index_models"))
        index_inputs = IndexInputs.from_state(payload.get("index_inputs"))
    except (ValueError, KeyError, RuntimeError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: checkpoint does not rebuild its model ({first[:160]})") from None
    device = torch.device(device)
    model.to(device).eval()
    train = payload.get("train_config", {})
    return LoadedModel(
        model=model,
        path=Path(path),
        family=config.family,
        channels=[(str(r), str(c)) for r, c in payload["channels"]],
        scaler=FeatureScaler.from_dict(payload["scaler"]),
        targets=payload.get("targets", {}),
        cells=int(train.get("cells", 1000)),
        calibration=payload.get("calibration") or {},
        ranges=payload.get("feature_ranges") or {},
        moments=payload.get("moments") or {},
        complete=bool(payload.get("complete", False)),
        device=device,
        covariates=CovariateEncoder.from_dict(payload.get("covariates")),
        index=index,
        index_inputs=index_inputs,
    )


# ----------------------------------------------------------------------------- files


@dataclass
class Prediction:
    file: str
    values: dict[str, float | None] = field(default_factory=dict)
    n_events: int = 0
    cells_used: int = 0
    draws: int | str = DRAWS
    covariates: dict[str, Any] = field(default_factory=dict)  # values used; None = unknown
    scales: dict[str, float] = field(default_factory=dict)  # role -> factor applied (--scale)
    qc_flags: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, **self.values, **{f"scale_{r}": f for r, f in self.scales.items()},
                **self.covariates, "n_events": self.n_events,
                "cells_used": self.cells_used, "draws": self.draws, "qc_flags": list(self.qc_flags),
                "error": self.error}


def expand_inputs(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; directories -> their ``*.fcs`` files (sorted); globs expanded. A name
    that matches nothing stays, so that reading it reports the problem."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() == ".fcs" and q.is_file())
        elif not p.exists() and glob.has_magic(str(item)):
            out += sorted(Path(q) for q in glob.glob(str(item)))
        else:
            out.append(p)
    return out


def select_channels(model: LoadedModel, names: list[str], labels: list[str | None], path: str,
                    overrides: dict[str, str] | None = None) -> list[int]:
    """Column of each model role: user overrides, then the checkpoint's channel names, then
    the aliases of ``resolve_channels``. Refuses a file lacking them, naming the channels."""
    from flowrbc.io.channels import resolve_channels

    lowered = {n.lower(): n for n in names} | {str(lab).lower(): str(lab) for lab in labels if lab}
    wanted = {role: lowered[ch.lower()] for role, ch in model.channels if ch.lower() in lowered}
    wanted.update(overrides or {})
    roles = [r for r, _ in model.channels]
    try:
        found = resolve_channels(names, labels, wanted, roles=roles)
    except ChannelError as exc:
        need = ", ".join(f"{r} ({c!r})" for r, c in model.channels)
        raise ChannelError(f"{path}: lacks the model's channels {need}: {exc}; map them with "
                           f"--channel ROLE=NAME") from None
    return [found[r] for r in roles]


def _qc_flags(model: LoadedModel, cells: np.ndarray, n_events: int, n_nonfinite: int,
              features: np.ndarray | None) -> list[str]:
    """QC flags of one file's gated ``cells``; ``features``: their moment features (F,)."""
    from flowrbc import pp

    flags = []
    n = len(cells)
    if n < pp.MIN_CELLS:
        flags.append("too_few_cells")
    if n_events - n > pp.MAX_GATED_OUT * max(n_events, 1):
        flags.append("many_gated_out")
    if n_nonfinite:
        flags.append("nonfinite_events")
    outside = np.zeros(n, dtype=bool)
    for j, (role, _) in enumerate(model.channels):
        r = model.ranges.get(role)
        if r:
            outside |= (cells[:, j] < r["p001"]) | (cells[:, j] > r["p999"])
    if n and outside.mean() > 0.05:  # 0.2 % expected for training-like data
        flags.append("outside_training_range")
    if model.moments and features is not None:
        mean, sd = np.asarray(model.moments["mean"]), np.maximum(np.asarray(model.moments["sd"]), 1e-12)
        lo, hi = np.asarray(model.moments["min"]), np.asarray(model.moments["max"])
        z = (features - mean) / sd
        if ((np.abs(z) > 5) & ((features < lo) | (features > hi))).any():
            flags.append("far_from_training")
    if not model.complete:
        flags.append("uncalibrated")
    return flags


def predict_file(model: LoadedModel, path: str | os.PathLike, *, overrides: dict[str, str] | None = None,
                 coverage: float | None = None, all_cells: bool = False, draws: int = DRAWS,
                 seed: int = 0, covariates: dict[str, Any] | None = None,
                 scales: dict[str, float] | None = None) -> Prediction:
    """Read, gate, QC and predict one FCS file. Raises FlowrbcError for an unusable file.

    ``covariates`` (e.g. ``{"sex": "F", "age": 61}``) for a model trained with them; a value
    not given is read from the file's keywords (FLOWRBC_SEX / SEX, FLOWRBC_AGE / AGE), else it
    is unknown: the model then predicts without it, with the interval and temperature
    calibrated for unknown covariates, and the QC flag ``covariates_unknown``.

    ``scales`` (role -> factor, ``--scale volume=0.09``) multiply a channel in instrument
    units; a channel whose median is far outside the training range is refused by name."""
    from flowrbc import pp
    from flowrbc.io.fcs import read_fcs_data
    from flowrbc.io.units import apply_scales, check_units, no_cells_error, reference_ranges

    data = read_fcs_data(path)
    cols = select_channels(model, data.names, data.labels, str(path), overrides)
    roles = [r for r, _ in model.channels]
    raw = apply_scales(data.events[:, cols], roles, scales)  # (n_events, 2) role order, float64
    names = [data.names[c] for c in cols]
    check_units(path, raw, roles, names, reference_ranges(roles, model.ranges), scales)
    finite = np.isfinite(raw).all(axis=1)
    keep = pp.rbc_gate(raw[:, 0], raw[:, 1])
    cells = raw[keep]
    if len(cells) == 0:
        raise no_cells_error(path, raw, roles, names, scales)
    out = Prediction(file=str(path), n_events=int(len(raw)), cells_used=int(len(cells)), scales=dict(scales or {}))
    features = None
    if model.moments or model.index is not None or model.index_inputs is not None:
        from flowrbc.metrics import moment_features

        features = moment_features(cells[:, 0], cells[:, 1], np.array([0, len(cells)]))[0]  # (1, F)
    out.qc_flags = _qc_flags(model, cells, len(raw), int((~finite).sum()),
                             None if features is None else features[0])
    cov, unknown, cov_raw = None, False, np.zeros(0)
    if model.covariates is not None and model.covariates.names:
        out.covariates, cov_raw = model.covariates.values(covariates, data.keywords)
        unknown = bool(np.isnan(cov_raw).any())
        if unknown:
            out.qc_flags.append("covariates_unknown")
        cov = torch.from_numpy(model.covariates.encode_raw(cov_raw[None])).to(model.device)  # (1, k)
    F = model.index_features(cells[:, 0], cells[:, 1], np.array([0, len(cells)]), moments=features)  # (1, F)
    inputs = model.decoder_inputs(cov, F)  # (1, k [+ F])
    X = torch.from_numpy(model.scaler.transform(cells)).to(model.device)  # (n, 2)
    if all_cells:
        heads = _stream_all(model, X, inputs)
        out.draws = "all"
    else:
        offsets = torch.tensor([0, len(cells)], device=model.device)
        heads = predict_sets(model.model, X, offsets, np.array([0]), model.targets, cells=model.cells,
                             draws=draws, seed=seed, covariates=inputs)
        heads = {k: float(v[0]) for k, v in heads.items()}
        out.draws = int(sets_per_sample(len(cells), model.cells, draws))
    if model.index is not None and not unknown:
        encoded = np.zeros((1, 0)) if cov is None else cov.cpu().numpy()
        blended = model.index.blend({k: np.array([v]) for k, v in heads.items()}, F, cov_raw[None], encoded)
        heads = {k: float(v[0]) for k, v in blended.items()}
    out.values = _report(model, heads, coverage, covariates_unknown=unknown)
    return out


def _stream_all(model: LoadedModel, X: torch.Tensor, cov: torch.Tensor | None = None,
                chunk: int = 4096) -> dict[str, float]:
    """Every gated cell through a streaming (slot_set) model, chunk by chunk."""
    net = model.model
    if not hasattr(net, "init_state"):
        raise FlowrbcError(f"--all-cells: needs a slot_set model (streaming); {model.path} is {model.family}")
    with torch.no_grad():
        state = net.init_state(1)
        for lo in range(0, len(X), chunk):
            state = net.update(state, X[None, lo : lo + chunk])
        raw = net.finalize(state, cov)
    return {k: float(v[0]) for k, v in decode_outputs(raw, model.targets).items()}


def _report(model: LoadedModel, heads: dict[str, float], coverage: float | None,
            covariates_unknown: bool = False) -> dict[str, float | None]:
    """Heads -> reported values: intervals for regression, calibrated probability and call.
    With a covariate unknown, the calibration fitted with covariates unknown applies."""
    from flowrbc.calibration import calibrated_probability, conformal_quantile

    values: dict[str, float | None] = {}
    for name, spec in model.targets.items():
        cal = model.calibration.get(name, {})
        if covariates_unknown:
            cal = cal.get("covariates_unknown", cal)
        if spec["kind"] == "regression":
            value = heads[name]
            values[name] = value
            q = None
            if cal and (coverage is None or math.isclose(coverage, cal["coverage"])):
                q = float(cal["halfwidth"])
            elif cal and "residuals" in cal:
                q = conformal_quantile(np.asarray(cal["residuals"]), coverage)
            values[f"{name}_low"] = value - q if q is not None and math.isfinite(q) else None
            values[f"{name}_high"] = value + q if q is not None and math.isfinite(q) else None
            values[f"{name}_coverage"] = (coverage if coverage is not None else cal.get("coverage")) if q is not None else None
        else:
            t = float(cal.get("temperature", 1.0))
            p = float(calibrated_probability(np.array([heads[name]]), t)[0])
            values[f"{name}_probability"] = p
            values[name] = bool(p >= float(cal.get("threshold", 0.5)))
    return values
