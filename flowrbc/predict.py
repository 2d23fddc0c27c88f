"""FCS files -> predictions: hematocrit ± conformal interval, calibrated anemia probability,
QC flags. Each file goes through the one input path (``flowrbc.io.sample``) and the one
predictor (``flowrbc.predictor``). The fast path: numpy, torch and flowrbc's numpy-only
readers; never anndata, scanpy, scikit-learn, pandas or matplotlib.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from flowrbc.inputs import DRAWS, sets_per_sample
from flowrbc.io.sample import FCS_SUFFIXES
from flowrbc.predictor import Predictor, load_model  # noqa: F401 (load_model: the CLI's and tests' entry)

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
    cells: np.ndarray | None = field(default=None, repr=False, compare=False)  # (n, 2) gated, not serialised

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, **self.values, **{f"scale_{r}": f for r, f in self.scales.items()},
                **self.covariates, "n_events": self.n_events,
                "cells_used": self.cells_used, "draws": self.draws, "qc_flags": list(self.qc_flags),
                "error": self.error}


def expand_inputs(items: Sequence[str | os.PathLike]) -> list[Path]:
    """Files as given; directories -> their FCS files (``*.fcs``, ``*.lmd``; sorted); globs expanded. A name
    that matches nothing stays, so that reading it reports the problem."""
    out: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            out += sorted(q for q in p.iterdir() if q.suffix.lower() in FCS_SUFFIXES and q.is_file())
        elif not p.exists() and glob.has_magic(str(item)):
            out += sorted(Path(q) for q in glob.glob(str(item)))
        else:
            out.append(p)
    return out


def _qc_flags(predictor: Predictor, sample: Any, moments: np.ndarray) -> list[str]:
    """QC flags of one file (``sample``: its ``flowrbc.io.sample.GatedSample``): the
    sample-level flags of ``pp.qc_flags``, then those relative to the model's training data;
    ``moments``: the moment features of its cells (F,)."""
    cells = sample.cells  # (n, 2)
    flags = sample.qc_flags()
    n = len(cells)
    outside = np.zeros(n, dtype=bool)
    for j, role in enumerate(predictor.roles):
        r = predictor.ranges.get(role)
        if r:
            outside |= (cells[:, j] < r["p001"]) | (cells[:, j] > r["p999"])
    if n and outside.mean() > 0.05:  # 0.2 % expected for training-like data
        flags.append("outside_training_range")
    if predictor.moments:
        ref = predictor.moments
        mean, sd = np.asarray(ref["mean"]), np.maximum(np.asarray(ref["sd"]), 1e-12)
        z = (moments - mean) / sd
        if ((np.abs(z) > 5) & ((moments < np.asarray(ref["min"])) | (moments > np.asarray(ref["max"])))).any():
            flags.append("far_from_training")
    if not predictor.complete:
        flags.append("uncalibrated")
    return flags


def predict_file(predictor: Predictor, path: str | os.PathLike, *, overrides: dict[str, str] | None = None,
                 coverage: float | None = None, all_cells: bool = False, draws: int = DRAWS,
                 seed: int = 0, covariates: dict[str, Any] | None = None,
                 scales: dict[str, float] | None = None, dataset: int = 0) -> Prediction:
    """Read, gate, QC and predict one FCS file (data set ``dataset``). Raises FlowrbcError for an unusable file.

    ``covariates`` (e.g. ``{"sex": "F", "age": 61}``) for a model trained with them; a value
    not given is read from the file's keywords (FLOWRBC_SEX / SEX, FLOWRBC_AGE / AGE), else it
    is unknown: the set model then predicts alone, with the interval and temperature
    calibrated for unknown covariates, and the QC flag ``covariates_unknown``.

    ``scales`` (role -> factor, ``--scale volume=0.09``) multiply a channel in instrument
    units; a channel whose median is far outside the training range is refused by name."""
    from flowrbc.io.sample import load_sample

    sample = load_sample(path, model_channels=predictor.channels, overrides=overrides, scales=scales,
                         trained_ranges=predictor.ranges, dataset=dataset)
    cells = sample.cells  # (n, 2) role order, float64: scaled, gated
    out = Prediction(file=str(path), n_events=sample.n_events, cells_used=len(cells), scales=sample.scales,
                     cells=cells)
    out.covariates, cov_raw = predictor.covariates.values(covariates, sample.keywords)  # (k,) NaN = unknown
    prep = predictor.prepare(cells, np.array([0, len(cells)]), cov_raw[None])
    out.qc_flags = _qc_flags(predictor, sample, prep.moments[0])
    unknown = bool(prep.unknown[0])
    if unknown:
        out.qc_flags.append("covariates_unknown")
    raw, _ = predictor.predict(prep, seed=seed, draws=draws, all_cells=all_cells)
    whole = all_cells or predictor.set_size is None
    out.draws = "all" if whole else int(sets_per_sample(len(cells), predictor.set_size, draws))
    value = {k: float(v[0]) for k, v in predictor.calibrated(raw).items()}
    out.values = predictor.record(value, unknown, coverage)
    return out
