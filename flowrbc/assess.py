"""A trained predictor judged: calibration on the validation split, then every score on the
test split and on a fresh cohort, each against the moments baseline as a paired difference
with its standard error, and (synthetic cohorts) against the cell bound.

``cohort_fits`` holds what reads the training cohort only (index members, moments baseline,
QC and healthy references): training runs it on a second thread during the epochs. ``finish``
is the rest, once the set model is trained.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from flowrbc.predictor import Predictor, Prepared, RawPredictions
from flowrbc.prepare import TrainingData


class Background:
    """``fn()`` on a daemon thread from construction; ``result()`` waits for it and re-raises
    its error. torch, numpy and scikit-learn release the GIL in their kernels, so the work
    overlaps what the calling thread computes; a daemon, so an interrupted run exits at once."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._out: tuple = (None, None)

        def run():
            try:
                self._out = (fn(), None)
            except BaseException as err:  # handed to result()
                self._out = (None, err)

        self._thread = threading.Thread(target=run, name="flowrbc-fit", daemon=True)
        self._thread.start()

    def result(self):
        self._thread.join()
        value, err = self._out
        if err is not None:
            raise err
        return value


@dataclass
class CohortFits:
    """What the finishing step needs that reads the training cohort only, not the set model."""

    index: Any  # flowrbc.hybrid.IndexModels, None without ``hybrid``
    baseline: Any  # flowrbc.metrics.MomentBaseline
    ranges: dict  # per-cell feature ranges of the training cells (QC)
    moments: dict  # moment-feature statistics of the training split (QC)
    healthy: dict | None  # the report's healthy reference
    proxy: dict | None = None  # out-of-fold predictions of the training split (flowrbc.spread.proxy_predictions)
    reference_cells: dict | None = None  # healthy cells ``flowrbc explain`` measures against


def baseline_features(prep: Prepared) -> np.ndarray:
    """The moments baseline's columns: moment features + raw covariates (NaN = unknown)."""
    return np.concatenate([prep.moments, prep.cov_raw], axis=1)


def cohort_fits(data: TrainingData, cohort, hybrid: bool, seed: int) -> CohortFits:
    """Index members (fitted on train, stopped on val), moments baseline (chosen on val), QC
    and healthy references, the out-of-fold predictions the spread models learn from."""
    from flowrbc.hybrid import fit_index_models
    from flowrbc.metrics import fit_moment_baseline
    from flowrbc.report.reference import healthy_cells, healthy_reference
    from flowrbc.spread import proxy_predictions

    prep, train, val = data.prep, data.split["train"], data.split["val"]
    index = None
    if hybrid:
        index = fit_index_models(prep.features, prep.feature_names, prep.cov_raw, prep.cov.cpu().numpy(),
                                 data.truth, data.specs, train, val, seed=seed)
    rows = np.arange(prep.n)
    names = prep.moment_names + [f"covariate_{n}" for n in data.predictor.covariates.names]
    baseline = fit_moment_baseline(baseline_features(prep), data.truth, np.isin(rows, train), np.isin(rows, val),
                                   names, seed=seed)
    sub = prep.raw[data.train_rows]
    ranges = {role: {"p001": float(np.percentile(sub[:, j], 0.1)), "p999": float(np.percentile(sub[:, j], 99.9)),
                     "min": float(sub[:, j].min()), "max": float(sub[:, j].max())}
              for j, role in enumerate(data.predictor.roles)}
    F = prep.moments[train]
    moments = {"names": list(prep.moment_names), "mean": F.mean(0).tolist(), "sd": F.std(0).tolist(),
               "min": F.min(0).tolist(), "max": F.max(0).tolist()}
    return CohortFits(index, baseline, ranges, moments,
                      healthy_reference(prep.raw, prep.offsets_np, cohort.samples, train),
                      proxy_predictions(prep.features, prep.cov_raw, data.truth, data.specs, train, seed),
                      healthy_cells(prep.raw, prep.offsets_np, cohort.samples, train, seed=seed))


def calibrate(predictor: Predictor, raw: RawPredictions, truth: dict[str, np.ndarray], coverage: float) -> dict:
    """Validation predictions -> a conformal interval per regression target (with the sorted
    residuals, so that any other coverage can be asked later), a temperature per binary one.
    Where ``raw`` carries a spread (``flowrbc.spread``), also the normalised interval: its
    scale and sorted scores, the spread model, and ``wide_halfwidth``, the 75th percentile of
    the validation patients' half-widths (reports call a wider interval wide)."""
    from flowrbc.calibration import fit_conformal, fit_normalised_conformal, fit_temperature

    out: dict[str, dict] = {}
    for name, spec in predictor.targets.items():
        y, p = truth[name], raw.value[name]
        ok = np.isfinite(y)
        if spec["kind"] == "regression":
            residuals = np.sort(np.abs(p[ok] - y[ok]))
            out[name] = dict(fit_conformal(p[ok], y[ok], coverage).to_dict(), residuals=residuals.tolist())
            s = raw.spread.get(name)
            if s is not None and name in predictor.spread and (ok & np.isfinite(s)).any():
                at = ok & np.isfinite(s)
                out[name].update(fit_normalised_conformal(p[at], y[at], s[at], coverage),
                                 spread=predictor.spread[name].to_state())
                if np.isfinite(out[name]["scale"]):  # else no finite interval, nor a wide one
                    out[name]["wide_halfwidth"] = float(np.percentile(out[name]["scale"] * s[at], 75))
        else:
            out[name] = {"temperature": fit_temperature(p[ok], y[ok]), "n": int(ok.sum()), "threshold": 0.5}
    return out


def calibration_summary(calibration: dict) -> dict:
    """The calibration as metrics.json shows it: without the spread models' trees, with each
    per-patient interval's scale."""
    return {k: calibration_summary(v) if isinstance(v, dict) else v for k, v in calibration.items() if k != "spread"}


def bound_metrics(samples) -> dict[str, dict[str, float]]:
    """The cell bound on these samples (synthetic cohorts only, ``flowrbc.synthetic``): the best
    prediction from the patient's cell population, sex and age. ``mse`` is its expected error
    (mean posterior variance), ``mse_realized`` its error on these patients; for anemia the
    Bayes probability's accuracy, AUROC and Brier score."""
    from flowrbc.metrics import classification_metrics, regression_metrics

    out: dict[str, dict[str, float]] = {}
    if {"bound_hematocrit", "bound_hematocrit_sd", "hematocrit"} <= set(samples.columns):
        m = regression_metrics(samples["hematocrit"].to_numpy(float), samples["bound_hematocrit"].to_numpy(float))
        out["hematocrit"] = {"mse": float(np.mean(samples["bound_hematocrit_sd"].to_numpy(float) ** 2)),
                             "mse_realized": m["mse"], "mae": m["mae"], "r2": m["r2"]}
    if {"bound_anemia_probability", "anemia"} <= set(samples.columns):
        p = samples["bound_anemia_probability"].to_numpy(float)
        out["anemia"] = dict(classification_metrics(samples["anemia"].to_numpy(float), p),
                             accuracy_expected=float(np.mean(np.maximum(p, 1 - p))))
    return out


def score(predictor: Predictor, raw: RawPredictions, truth: dict[str, np.ndarray],
          baseline: dict[str, np.ndarray] | None = None) -> tuple[dict[str, Any], dict[str, tuple]]:
    """The calibrated predictor against ``truth`` and, when given, the baseline's predictions:
    ``({"n", "model", "baseline", "paired"}, plot arrays)`` (paired: model − baseline per
    patient, with its SE)."""
    from flowrbc.calibration import calibrated_probability
    from flowrbc.evaluation import compare, standard_errors
    from flowrbc.metrics import classification_metrics, regression_metrics

    out: dict[str, Any] = {"n": len(raw.unknown), "model": {}, "baseline": {}, "paired": {}}
    arrays: dict[str, tuple] = {}
    value = predictor.calibrated(raw)
    for name, spec in predictor.targets.items():
        y = truth[name]
        ok = np.isfinite(y)
        if not ok.any():
            continue
        p = value[name][ok]
        if spec["kind"] == "regression":
            m = regression_metrics(y[ok], p)
            q = np.nan_to_num(predictor.halfwidths(name, raw)[ok], nan=np.inf)
            m["coverage"] = float(np.mean(np.abs(p - y[ok]) <= q))
            m["interval_halfwidth"] = float(np.mean(q))
            arrays[name] = (y[ok], p, float(np.mean(q)))
            metric = regression_metrics
        else:
            m = classification_metrics(y[ok], p)
            m["ece_uncalibrated"] = classification_metrics(y[ok], calibrated_probability(raw.value[name][ok], 1.0))["ece"]
            arrays[name] = (y[ok], p)
            metric = classification_metrics
        out["model"][name] = dict(m, **standard_errors(spec["kind"], y[ok], p))
        if baseline is not None:
            b = baseline[name][ok]
            out["baseline"][name] = dict(metric(y[ok], b), **standard_errors(spec["kind"], y[ok], b))
            out["paired"][name] = compare(spec["kind"], y[ok], p, b)
    return out, arrays


def against_reference(predictor: Predictor, arrays: dict[str, tuple], truth: dict, ref: dict) -> dict:
    """A reference predictor ``ref`` (target -> (n,)) on the patients the predictor was scored
    on (``score``'s arrays): its metrics, and predictor − reference paired."""
    from flowrbc.evaluation import compare, standard_errors
    from flowrbc.metrics import classification_metrics, regression_metrics

    out: dict[str, Any] = {"model": {}, "paired": {}}
    for name, spec in predictor.targets.items():
        if name not in ref or name not in arrays:
            continue
        y, value = arrays[name][0], arrays[name][1]
        r = np.asarray(ref[name], np.float64)[np.isfinite(truth[name])]
        metric = regression_metrics if spec["kind"] == "regression" else classification_metrics
        out["model"][name] = dict(metric(y, r), **standard_errors(spec["kind"], y, r))
        out["paired"][name] = compare(spec["kind"], y, value, r)
    return out


def finish(predictor: Predictor, data: TrainingData, fits: CohortFits, coverage: float, cohort,
           fresh=None, reference: Callable[[], dict] | None = None) -> tuple[dict[str, Any], dict]:
    """Calibrate ``predictor`` on validation; score it, the set model alone, the moments
    baseline and the bound on test and on ``fresh`` (a cohort no choice ever saw).

    With covariates, the set model is also calibrated and tested with every covariate unknown
    (``calibration[target]["covariates_unknown"]``, ``test["model_covariates_unknown"]``).
    Sets ``predictor.index`` and ``predictor.calibration``. -> (metrics, test plot arrays,
    with the test split's ``sample_predictions`` under ``"samples"``)."""
    from flowrbc.spread import fit_spreads

    has_cov = bool(predictor.covariates.names)
    predictor.index = fits.index
    predictor.spread = fit_spreads(predictor, data, fits.proxy)
    val = data.split["val"]
    given, unknown = predictor.predict(data.prep, val, unknown_too=has_cov)
    truth_val = {k: v[val] for k, v in data.truth.items()}
    predictor.calibration = calibrate(predictor, given, truth_val, coverage)
    if has_cov:
        for name, cal in calibrate(predictor, unknown, truth_val, coverage).items():
            predictor.calibration[name]["covariates_unknown"] = cal
    metrics: dict[str, Any] = {"calibration": calibration_summary(predictor.calibration),
                               "predictor": "hybrid" if fits.index is not None else "set model",
                               "index_inputs": predictor.index_inputs is not None}
    scored = []
    if len(data.split["test"]):
        test = data.split["test"]
        scored.append(("test", data.prep, test, {k: v[test] for k, v in data.truth.items()}, cohort.samples.iloc[test]))
    if fresh is not None:
        ext = predictor.prepare_cohort(fresh, features=True)
        truth = {k: fresh.samples[k].to_numpy(dtype=np.float64, na_value=np.nan) for k in predictor.targets}
        scored.append(("fresh", ext, np.arange(ext.n), truth, fresh.samples))
    arrays: dict = {}
    for key, prep, idx, truth, samples in scored:
        given, unknown = predictor.predict(prep, idx, unknown_too=has_cov and key == "test")
        base = fits.baseline.predict(baseline_features(prep)[idx])
        metrics[key], scored_arrays = score(predictor, given, truth, base)
        metrics[key]["bound"] = bound_metrics(samples)
        if fits.index is not None:
            alone, _ = score(predictor, RawPredictions(given.set_model, given.set_model, given.unknown), truth, base)
            metrics[key]["set_model"] = {"model": alone["model"], "paired": alone["paired"]}
        if unknown is not None:
            metrics[key]["model_covariates_unknown"] = score(predictor, unknown, truth)[0]["model"]
        if key == "test":
            arrays = dict(scored_arrays, samples=sample_predictions(predictor, given, idx, base))
        else:
            metrics[key]["cohort"] = fresh.source
            if reference is not None:
                metrics[key]["reference"] = against_reference(predictor, scored_arrays, truth, reference())
    return metrics, arrays


def sample_predictions(predictor: Predictor, raw: RawPredictions, idx: np.ndarray, baseline: dict) -> dict:
    """Per sample of ``idx``: the predictor's raw and calibrated values, each regression
    target's interval half-width (NaN: none) and the baseline's prediction; what
    cross-validation keeps of a held-out fold (``flowrbc.crossval``)."""
    half = {}
    for name, spec in predictor.targets.items():
        if spec["kind"] == "regression":
            half[name] = predictor.halfwidths(name, raw)
    value = {k: v for k, v in predictor.calibrated(raw).items() if k in predictor.targets}  # not the widths
    return {"idx": np.asarray(idx), "raw": raw.value, "value": value, "halfwidth": half,
            "baseline": baseline, "unknown": raw.unknown}


def fresh_synthetic(cohort, patients: int, cells: int | None = None) -> tuple[Any, Callable[[], dict]]:
    """For a run on the built-in cohort: ``patients`` fresh synthetic patients of another seed
    (``cells`` each; None: the built-in size), and the reference scored beside the model on
    them (the model given each patient's exact population parameters, learned from the same
    training patients; ``flowrbc.synthetic.reference``)."""
    from flowrbc.io.builtin import DEFAULT_CELLS, DEFAULT_SEED, FRESH_SEED, load_default_cohort
    from flowrbc.synthetic.reference import exact_population_reference

    fresh = load_default_cohort(patients, cells or DEFAULT_CELLS, FRESH_SEED)

    def reference() -> dict:
        return exact_population_reference(cohort.samples, DEFAULT_SEED, fresh.samples, FRESH_SEED)

    return fresh, reference
