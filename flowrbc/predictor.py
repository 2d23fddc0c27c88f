"""The one predictor: a trained set model and everything that turns a patient's cells into the
values flowrbc reports.

``Predictor`` holds the set model, the per-cell scaler, the covariate encoder, the encoder of
the index features the decoder reads (``flowrbc.hybrid.IndexInputs``), the index members it is
blended with (``flowrbc.hybrid.IndexModels``) and the calibration. It is built once per
training run (``flowrbc.train``) and rebuilt from ``model.pt`` by ``Predictor.load``; training's
finishing step, ``flowrbc evaluate``, ``embed``, ``predict`` and both reports all predict
through it, so they cannot disagree.

Two steps:

1. ``prepare`` (cells + offsets + raw covariates) or ``prepare_cohort`` -> ``Prepared``: the
   scaled cells on the device, the encoded covariates, the index features and their encoding;
2. ``predict`` -> ``RawPredictions`` (set model alone, and the predictor: the set model blended
   with the index members where every covariate is known, and each sample's interval spread),
   then ``calibrated`` (probabilities, each sample's interval half-width: ``halfwidths``) or
   ``record`` (one patient's reported values).

A sample with a covariate unknown is predicted by the set model alone with the calibration
fitted with every covariate unknown (``calibration_for``). numpy and torch only: the predict
path loads this module.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowrbc.covariates import CovariateEncoder
from flowrbc.errors import ChannelError, CheckpointError
from flowrbc.inputs import DRAWS, FeatureScaler, decoder_inputs, embedded_sets, predict_sets_each


def rows_of(offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cell rows of samples ``idx`` (concatenated) and the offsets of that sub-matrix."""
    starts = offsets[idx]
    counts = offsets[np.asarray(idx) + 1] - starts
    sub = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = np.repeat(starts - sub[:-1], counts) + np.arange(sub[-1])
    return rows, sub


@dataclass
class Prepared:
    """Samples as the predictor reads them (n samples, their cells in the model's role order)."""

    X: torch.Tensor  # (n_cells, C) scaled, on the predictor's device
    offsets: torch.Tensor  # (n + 1,) on the device
    raw: np.ndarray  # (n_cells, C) unscaled cells: the moment and index features, QC
    offsets_np: np.ndarray  # (n + 1,)
    cov_raw: np.ndarray  # (n, k) NaN = unknown
    cov: torch.Tensor  # (n, k) encoded, 0 = unknown
    moments: np.ndarray  # (n, F_m) moment features (``flowrbc.metrics.moment_features``)
    moment_names: list[str]
    features: np.ndarray | None = None  # (n, F) index features; None: the predictor reads none
    feature_names: list[str] = field(default_factory=list)
    encoded_features: torch.Tensor | None = None  # (n, F) the decoder's index inputs; None: none

    @property
    def n(self) -> int:
        return len(self.offsets_np) - 1

    @property
    def unknown(self) -> np.ndarray:
        """(n,) bool: a covariate of the sample is unknown."""
        return np.isnan(self.cov_raw).any(axis=1)


@dataclass
class RawPredictions:
    """Uncalibrated outputs for n samples: regression values in target units, binary logits."""

    set_model: dict[str, np.ndarray]  # target -> (n,) the set model alone
    value: dict[str, np.ndarray]  # target -> (n,) the predictor (blended where covariates known)
    unknown: np.ndarray  # (n,) bool: predicted with a covariate unknown
    spread: dict[str, np.ndarray] = field(default_factory=dict)  # target -> (n,) σ(x) of its interval
    # (``flowrbc.spread``); absent: one width for all


@dataclass
class Predictor:
    """A trained predictor (see the module docstring). ``model`` is None while training."""

    model: torch.nn.Module | None
    channels: list[tuple[str, str]]  # (role, channel name) in input order
    scaler: FeatureScaler
    targets: dict[str, dict]  # name -> {"kind": "regression", "mean", "std"} | {"kind": "binary"}
    covariates: CovariateEncoder
    set_size: int | None  # cells per prediction set (the average over disjoint sets); None: every
    # cell in one set (a model trained on every cell, or whose decoder was refitted on them)
    index_inputs: Any = None  # flowrbc.hybrid.IndexInputs; None: the decoder reads no index features
    index: Any = None  # flowrbc.hybrid.IndexModels; None: the set model alone
    calibration: dict[str, dict] = field(default_factory=dict)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    ranges: dict[str, dict] = field(default_factory=dict)  # training per-cell feature ranges (QC)
    moments: dict[str, Any] = field(default_factory=dict)  # training moment-feature statistics (QC)
    complete: bool = True  # False: a checkpoint written before training finished
    path: Path | None = None
    family: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # the checkpoint's descriptive keys (reports)
    spread: dict[str, Any] = field(default_factory=dict)  # target -> flowrbc.spread.SpreadModel (per-patient widths)
    reference_cells: np.ndarray | None = None  # (m, C) healthy training cells, role order (``flowrbc.explain``)
    precision: str = "auto"  # "auto", "bf16" or "fp32" (``flowrbc.precision``); loaded: the one it was validated in

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu",
             precision: str | None = None) -> Predictor:
        """Rebuild the predictor of ``model.pt`` (loaded safely: weights only). ``precision``
        None: the one its model was validated in (a checkpoint written before flowrbc recorded
        it: "auto")."""
        from flowrbc.checkpoint import load_checkpoint
        from flowrbc.hybrid import IndexInputs, IndexModels
        from flowrbc.models import ModelConfig, build_model
        from flowrbc.spread import SpreadModel

        payload = load_checkpoint(path)
        try:
            config = ModelConfig.from_dict(payload["model_config"])
            model = build_model(config)
            model.load_state_dict(payload["state_dict"])
            index = IndexModels.from_state(payload["index_models"])
            index_inputs = IndexInputs.from_state(payload["index_inputs"])
            spread = {name: SpreadModel.from_state(cal["spread"])
                      for name, cal in (payload.get("calibration") or {}).items() if cal.get("spread")}
        except (ValueError, KeyError, RuntimeError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{path}: checkpoint does not rebuild its model ({first[:160]})") from None
        device = torch.device(device)
        model.to(device).eval()
        reference = (payload.get("explain_reference") or {}).get("cells")
        meta = {k: payload.get(k) for k in ("model_config", "versions", "format_version", "digest", "cohort",
                                             "best_epoch", "healthy_reference", "metrics")}
        return cls(model=model, channels=[(str(r), str(c)) for r, c in payload["channels"]],
                   scaler=FeatureScaler.from_dict(payload["scaler"]), targets=payload["targets"],
                   covariates=CovariateEncoder.from_dict(payload["covariates"]),
                   set_size=payload.get("read_size", payload["train_config"]["set_size"]),
                   index_inputs=index_inputs, index=index,
                   calibration=payload.get("calibration") or {}, device=device,
                   ranges=payload.get("feature_ranges") or {}, moments=payload.get("moments") or {},
                   complete=bool(payload.get("complete", False)), path=Path(path), family=config.family,
                   meta=meta, spread=spread, precision=precision or payload.get("precision") or "auto",
                   reference_cells=None if reference is None else reference.numpy().astype(np.float64))

    # ------------------------------------------------------------------ inputs

    @property
    def roles(self) -> list[str]:
        return [r for r, _ in self.channels]

    @property
    def reads_features(self) -> bool:
        return self.index is not None or self.index_inputs is not None or bool(self.spread)

    def index_features(self, raw: np.ndarray, offsets: np.ndarray,
                       moments: tuple[np.ndarray, list[str]]) -> tuple[np.ndarray, list[str]]:
        """What the index members and the index inputs read -> ((n, F), names): the moment
        features alone for members fitted before the shape features existed, else moment +
        shape features."""
        from flowrbc.hybrid import index_features

        if self.index is not None and not self.index.shape:
            return moments
        return index_features(raw[:, 0], raw[:, 1], offsets, moments)

    def prepare(self, raw: np.ndarray, offsets: np.ndarray, cov_raw: np.ndarray,
                features: bool | None = None) -> Prepared:
        """Cells ``raw`` (n_cells, C) in role order split by ``offsets`` (n + 1,), covariates
        ``cov_raw`` (n, k) NaN = unknown -> ``Prepared``. ``features``: compute the index
        features (None: when the predictor reads them)."""
        from flowrbc.metrics import moment_features

        offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        cov_raw = np.asarray(cov_raw, dtype=np.float64).reshape(len(offsets) - 1, len(self.covariates.names))
        moments = moment_features(raw[:, 0], raw[:, 1], offsets)
        F, names = (self.index_features(raw, offsets, moments)
                    if (self.reads_features if features is None else features) else (None, []))
        encoded = None
        if self.index_inputs is not None:
            encoded = torch.from_numpy(self.index_inputs.encode(F)).to(self.device)
        return Prepared(X=torch.from_numpy(self.scaler.transform(raw)).to(self.device),
                        offsets=torch.from_numpy(offsets).to(self.device), raw=raw, offsets_np=offsets,
                        cov_raw=cov_raw, cov=torch.from_numpy(self.covariates.encode_raw(cov_raw)).to(self.device),
                        moments=moments[0], moment_names=moments[1], features=F, feature_names=names,
                        encoded_features=encoded)

    def cohort_columns(self, cohort) -> list[int]:
        """The cohort's columns of the model's channels, by name."""
        missing = [f"{r} ({c!r})" for r, c in self.channels if c not in cohort.channels]
        if missing:
            raise ChannelError(f"cohort {cohort.source}: lacks the model's channels {', '.join(missing)}")
        return [cohort.channels.index(c) for _, c in self.channels]

    def prepare_cohort(self, cohort, idx: np.ndarray | None = None, features: bool | None = None) -> Prepared:
        """Samples ``idx`` of a cohort (None: all) -> ``Prepared``; a covariate column the sample
        table lacks is unknown for every sample."""
        cols = self.cohort_columns(cohort)
        samples = cohort.samples
        if idx is None:
            raw, offsets = cohort.X[:, cols], cohort.offsets
        else:
            rows, offsets = rows_of(cohort.offsets, idx)
            raw, samples = cohort.X[rows][:, cols], samples.iloc[idx]
        return self.prepare(raw, offsets, self.covariates.raw(samples, missing_unknown=True), features)

    # ------------------------------------------------------------------ prediction

    def decoder_inputs(self, prep: Prepared, rows: torch.Tensor, known: bool = True) -> torch.Tensor | None:
        """What the decoder reads beside the embedding for samples ``rows``: encoded covariates
        (``known`` False: all unknown), then the encoded index features."""
        k = len(self.covariates.names)
        cov = prep.cov[rows] if k and known else None
        features = None if prep.encoded_features is None else prep.encoded_features[rows]
        if features is None and cov is None and k:
            return prep.cov.new_zeros(len(rows), k)
        return decoder_inputs(cov, features, k)

    def predict(self, prep: Prepared, idx: np.ndarray | None = None, *, seed: int = 0, draws: int = DRAWS,
                unknown_too: bool = False, all_cells: bool = False) -> tuple[RawPredictions, RawPredictions | None]:
        """Predictions for samples ``idx`` of ``prep`` (None: all) with their covariates and,
        ``unknown_too``, with every covariate unknown (the same sets, one encoder pass). Each
        sample is read as the model was trained: every cell in one set for a model trained on
        whole samples (or ``all_cells``), else the average over at most ``draws`` disjoint
        sets of ``set_size`` cells; in ``precision``.
        A sample's sets depend on its number of cells and ``seed`` only (``flowrbc.inputs.shuffle_prefix``)."""
        idx = np.arange(prep.n) if idx is None else np.ascontiguousarray(idx, dtype=np.int64)
        rows = torch.as_tensor(idx, device=self.device)
        entries = [self.decoder_inputs(prep, rows)] + ([self.decoder_inputs(prep, rows, known=False)] if unknown_too else [])
        outs = predict_sets_each(self.model, prep.X, prep.offsets, idx, self.targets, entries,
                                 cells=None if all_cells else self.set_size, draws=draws, seed=seed,
                                 precision=self.precision)
        given = RawPredictions(outs[0], self.blend(prep, idx, outs[0]), prep.unknown[idx])
        given.spread = self.spreads(prep, idx, given)
        if not unknown_too:
            return given, None
        unknown = RawPredictions(outs[1], dict(outs[1]), np.ones(len(idx), dtype=bool))
        unknown.spread = self.spreads(prep, idx, unknown)
        return given, unknown

    def blend(self, prep: Prepared, idx: np.ndarray, set_pred: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The set model's predictions blended with the index members (``flowrbc.hybrid``) for
        the samples whose covariates are all known; the others keep the set model's."""
        if self.index is None:
            return dict(set_pred)
        known = ~prep.unknown[idx]
        out = {k: np.array(v, dtype=np.float64) for k, v in set_pred.items()}
        if known.any():
            at = idx[known]
            blended = self.index.blend({k: v[known] for k, v in out.items()}, prep.features[at], prep.cov_raw[at],
                                       prep.cov[torch.as_tensor(at, device=self.device)].cpu().numpy())
            for k, v in blended.items():
                out[k][known] = v
        return out

    @torch.no_grad()
    def embeddings(self, prep: Prepared, idx: np.ndarray | None = None, *, seed: int = 0,
                   draws: int = DRAWS) -> np.ndarray:
        """The mean of ``model.embed`` over each sample's prediction sets -> (len(idx), D)."""
        idx = np.arange(prep.n) if idx is None else np.ascontiguousarray(idx, dtype=np.int64)
        k, sets = embedded_sets(self.model, prep.X, prep.offsets, idx, cells=self.set_size, draws=draws, seed=seed,
                                precision=self.precision)
        total = None
        for at, z in sets:
            z = z.float()
            total = torch.zeros(len(idx), z.shape[1], device=z.device) if total is None else total
            total.index_add_(0, at, z)
        return (total / k.to(total.dtype)[:, None]).cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------------ calibration

    def calibration_for(self, target: str, unknown: bool) -> dict:
        """The calibration of ``target``; with a covariate unknown, the one fitted that way."""
        cal = self.calibration.get(target, {})
        return cal.get("covariates_unknown", cal) if unknown else cal

    def spreads(self, prep: Prepared, idx: np.ndarray, raw: RawPredictions) -> dict[str, np.ndarray]:
        """σ(x) of samples ``idx`` per target with a spread model (``flowrbc.spread``), from their
        index features, covariates (every one unknown for a sample ``raw`` predicts with a
        covariate unknown, as its calibration was fitted) and ``raw``'s outputs."""
        if not self.spread:
            return {}
        from flowrbc.spread import spread_inputs

        idx = np.asarray(idx)
        F = prep.features
        if F is None:
            F = self.index_features(prep.raw, prep.offsets_np, (prep.moments, prep.moment_names))[0]
        cov = prep.cov_raw[idx].copy()
        cov[np.asarray(raw.unknown, dtype=bool)] = np.nan
        X = spread_inputs(F[idx], cov, {k: np.asarray(v) for k, v in raw.value.items()})
        return {name: model.predict(X) for name, model in self.spread.items()}

    def calibrated(self, raw: RawPredictions) -> dict[str, np.ndarray]:
        """Regression values as they are, with ``{name}_halfwidth``: each sample's interval
        half-width at the calibrated coverage (NaN: none); binary logits -> calibrated
        probabilities."""
        from flowrbc.calibration import calibrated_probability

        out = {}
        for name, spec in self.targets.items():
            value = np.asarray(raw.value[name], dtype=np.float64)
            if spec["kind"] == "binary":
                t = np.array([float(self.calibration_for(name, bool(u)).get("temperature", 1.0)) for u in raw.unknown])
                value = calibrated_probability(value, t)
            out[name] = value
            if spec["kind"] == "regression" and self.calibration.get(name):
                out[f"{name}_halfwidth"] = self.halfwidths(name, raw)
        return out

    def halfwidth(self, target: str, unknown: bool, coverage: float | None = None) -> float | None:
        """The one half-width of the plain conformal interval for ``coverage`` (None: the
        calibrated one): every sample's without a spread model, else the cohort-wide width the
        per-patient ones (``halfwidths``) replace; None for an uncalibrated model."""
        from flowrbc.calibration import calibrated_quantile

        return calibrated_quantile(self.calibration_for(target, unknown), "halfwidth", "residuals", coverage)

    @staticmethod
    def scale(cal: dict, coverage: float | None = None) -> float | None:
        """q of a per-patient calibration (half-width = q · σ(x)) for ``coverage`` (None: the
        calibrated one); None without one or when infinite."""
        from flowrbc.calibration import calibrated_quantile

        return calibrated_quantile(cal, "scale", "scores", coverage)

    def halfwidths(self, target: str, raw: RawPredictions, coverage: float | None = None) -> np.ndarray:
        """(n,) each sample's half-width for ``coverage`` (None: the calibrated one): q · σ(x)
        where ``raw`` carries a spread, else the one width of its calibration; NaN: none."""
        out = np.full(len(raw.unknown), np.nan)
        spread = raw.spread.get(target)
        for unknown in (False, True):
            at = np.asarray(raw.unknown, dtype=bool) == unknown
            if not at.any():
                continue
            q = self.scale(self.calibration_for(target, unknown), coverage) if spread is not None else None
            if q is not None:
                out[at] = q * spread[at]
            else:
                one = self.halfwidth(target, unknown, coverage)
                out[at] = np.nan if one is None else one
        return np.where(np.isfinite(out), out, np.nan)

    def record(self, calibrated: dict[str, float], unknown: bool, coverage: float | None = None) -> dict[str, Any]:
        """One sample's reported values: each regression target with its interval (the sample's
        own width where ``calibrated`` carries ``{name}_halfwidth``, with ``{name}_interval_wide``:
        wider than three quarters of the validation patients'), each binary target's
        probability and call."""
        values: dict[str, Any] = {}
        for name, spec in self.targets.items():
            cal = self.calibration_for(name, unknown)
            value = float(calibrated[name])
            if spec["kind"] == "regression":
                nominal = calibrated.get(f"{name}_halfwidth")
                q, base = self.halfwidth(name, unknown, coverage), self.scale(cal)
                per_patient = nominal is not None and base is not None
                if per_patient:
                    q = self.scale(cal, coverage)
                    q = None if q is None or not math.isfinite(nominal) or base <= 0 else float(nominal) * q / base
                values.update({name: value, f"{name}_low": None if q is None else value - q,
                               f"{name}_high": None if q is None else value + q,
                               f"{name}_coverage": None if q is None else (coverage or cal.get("coverage"))})
                if name in self.spread:
                    wide = cal.get("wide_halfwidth")
                    values[f"{name}_interval_wide"] = (bool(float(nominal) > float(wide)) if per_patient and wide
                                                       is not None and math.isfinite(nominal) else None)
            else:
                values.update({f"{name}_probability": value, name: bool(value >= float(cal.get("threshold", 0.5)))})
        return values


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", precision: str | None = None) -> Predictor:
    """``Predictor.load``: the predictor of a checkpoint."""
    return Predictor.load(path, device, precision)
