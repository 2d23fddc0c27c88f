r"""Per-patient interval widths: a model of how large the predictor's error is for a patient
whose cells look like this, and the normalised split-conformal interval built on it.

Split conformal with one half-width gives every patient the same ±q. The error is not the
same for everyone: a clearly iron-deficient picture pins the hematocrit down, while a
normocytic picture that could be healthy or a mild anemia of chronic disease leaves it open.
Normalised conformal (Papadopoulos et al. 2008; Lei et al. 2018, §5.2) keeps the guarantee
and lets the width follow the patient:

.. math::  \hat y(x) \pm q\,\sigma(x), \qquad q = \text{the } \lceil (n + 1)(1 - \alpha) \rceil\text{-th smallest of }
   |y_i - \hat y(x_i)| / \sigma(x_i) \text{ on the validation split}

For any fixed spread :math:`\sigma`, the scores of validation and new patients are
exchangeable, so the interval covers a new patient with probability ≥ 1 − α, whatever
:math:`\sigma` is; a good :math:`\sigma` only makes the widths fit the patients. Hence the
spread model never sees the validation split: it is fitted on the training split.

:math:`\sigma(x)`: boosted trees (``SPREAD_PARAMS``) of the absolute error on what the lab
sees — the index features (``flowrbc.hybrid.index_features``), sex and age, and the
predictor's own outputs (each regression target's prediction, each binary target's logit).
The errors it learns from are those of training patients, where the set model and the
index members have seen the answers; so half of each training error is the set model's
(in-sample) and half that of boosted trees on the index features fitted on the other four
fifths of the training split (``out_of_fold``, out-of-sample). Measured on experiment
cohorts 777 and 779 (5,000 patients each, runs of seeds 0–2; ``benchmarks/intervals.py
--candidates``): learned from the predictor's own in-sample errors, the rare conditions'
intervals came out too narrow (coverage macrocytic 0.834, hemolysis 0.827, chronic disease
0.767 at mean ±4.90); from this mix 0.866, 0.869 and 0.792 at ±5.00, one width for all
0.918, 0.926 and 0.608 at ±5.01 (benchmarks/RESULTS.md, "Per-patient intervals").

A sample with a covariate unknown is predicted by the set model alone; the same spread model
reads it with every covariate unknown (the trees send a missing value down their default
branch), and the interval's scale is calibrated on the validation split predicted that way
(``calibration[target]["covariates_unknown"]``), so the guarantee holds for it too. Measured
on 5,000 fresh patients (seed 0 run, ``benchmarks/intervals_unknown.py``), against one width
for all: coverage 0.897 -> 0.911, the worst condition 0.684 -> 0.824 (chronic disease 0.684 ->
0.861; hemolysis 0.912 -> 0.824, iron deficiency 0.969 -> 0.853), mean half-width 6.05 -> 6.47. What a width cannot mend is the point prediction's bias where pictures
look alike: in chronic disease the predictor is +4.0 too high on average (the Bayes
posterior mean +1.9), so those patients are covered 0.74–0.76 of the time on fresh cohorts
(0.57–0.60 with one width); even the generator's posterior SD as σ, which no lab has, would
reach only 0.79 at the same mean width.

numpy only when applied (``flowrbc.trees``): the predict path loads this module; fitting
imports scikit-learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowrbc.trees import TreeEnsemble

SPREAD_PARAMS = {"learning_rate": 0.03, "max_iter": 200, "max_depth": 3, "min_samples_leaf": 80}
PROXY_PARAMS = {"learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 15, "min_samples_leaf": 20}
FOLDS = 5  # out-of-fold proxy predictions of the training split
SET_SHARE = 0.5  # the set model's (in-sample) share of a training patient's error
FLOOR = 0.25  # the smallest spread, as a fraction of the median training spread


def spread_inputs(features: np.ndarray, cov_raw: np.ndarray, outputs: dict[str, np.ndarray]) -> np.ndarray:
    """What the spread model reads, (n, F + k + targets): the index features, the raw
    covariates (NaN = unknown) and the predictor's outputs in the predictor's target order."""
    cols = [np.asarray(features, np.float64), np.asarray(cov_raw, np.float64).reshape(len(features), -1)]
    cols += [np.asarray(v, np.float64)[:, None] for v in outputs.values()]
    return np.concatenate(cols, axis=1)


@dataclass
class SpreadModel:
    """σ(x) of one regression target: boosted trees of |error| applied in numpy, floored."""

    trees: TreeEnsemble
    inputs: list[str]  # the names of the columns of ``spread_inputs`` it was fitted on
    floor: float  # spreads below this are raised to it (target units)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """(n, len(inputs)) -> (n,) spreads in the target's units."""
        if X.shape[1] != len(self.inputs):
            raise ValueError(f"spread model reads {len(self.inputs)} inputs, got {X.shape[1]}")
        return np.maximum(self.trees.predict_raw(X), self.floor)

    def to_state(self) -> dict:
        return {"trees": self.trees.to_state(), "inputs": list(self.inputs), "floor": float(self.floor)}

    @classmethod
    def from_state(cls, state: dict | None) -> SpreadModel | None:
        if not state:
            return None
        return cls(TreeEnsemble.from_state(state["trees"]), [str(s) for s in state["inputs"]], float(state["floor"]))


def out_of_fold(X: np.ndarray, y: np.ndarray, rows: np.ndarray, seed: int = 0, folds: int = FOLDS) -> np.ndarray:
    """Out-of-fold predictions of ``y`` for ``rows``: boosted trees (``PROXY_PARAMS``) on
    ``X`` fitted ``folds`` times, each on the other folds -> (len(rows),)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    rows = np.asarray(rows)
    fold = np.random.default_rng(seed).permutation(np.arange(len(rows)) % folds)
    out = np.full(len(rows), np.nan)
    with threadpool_limits(1):  # one OpenMP thread, as the index members (flowrbc.metrics)
        for k in range(folds):
            fit = rows[fold != k]
            model = HistGradientBoostingRegressor(early_stopping=False, random_state=seed, **PROXY_PARAMS)
            model.fit(X[fit], y[fit])
            out[fold == k] = model.predict(X[rows[fold == k]])
    return out


def fit_spread(X: np.ndarray, error: np.ndarray, names: list[str], seed: int = 0) -> SpreadModel:
    """σ(x) fitted on the rows of ``X`` (``spread_inputs``) to the absolute ``error`` of each."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    target = np.abs(np.asarray(error, np.float64))
    keep = np.isfinite(target)
    with threadpool_limits(1):
        model = HistGradientBoostingRegressor(early_stopping=False, random_state=seed, **SPREAD_PARAMS)
        model.fit(X[keep], target[keep])
    trees = TreeEnsemble.from_sklearn(model)
    fitted = trees.predict_raw(X[keep])
    floor = FLOOR * float(np.median(fitted)) if len(fitted) else 1.0
    return SpreadModel(trees, list(names), max(floor, 1e-6))


def training_error(set_value: np.ndarray, proxy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The error a spread model learns from for training patients: ``SET_SHARE`` of the set
    model's, the rest the out-of-fold proxy's."""
    return SET_SHARE * (np.asarray(set_value) - y) + (1.0 - SET_SHARE) * (np.asarray(proxy) - y)


def proxy_predictions(features: np.ndarray, cov_raw: np.ndarray, truth: dict[str, np.ndarray], specs: dict,
                      train: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Per regression target, ``out_of_fold`` predictions of the training split's samples
    ``train`` from [index features, raw covariates] -> (len(train),), NaN where the target is
    missing. Reads the cohort only: training computes it during the epochs."""
    X = np.concatenate([features, cov_raw], axis=1)
    out = {}
    for name, spec in specs.items():
        if spec["kind"] != "regression":
            continue
        y = truth[name]
        has = np.isfinite(y[train])
        pred = np.full(len(train), np.nan)
        if has.sum() >= 2 * FOLDS:
            pred[has] = out_of_fold(X, y, train[has], seed)
        out[name] = pred
    return out


def fit_spreads(predictor, data, proxy: dict[str, np.ndarray] | None) -> dict[str, SpreadModel]:
    """σ(x) of each regression target of ``proxy`` (``proxy_predictions``) from the training
    split of ``data`` (``flowrbc.prepare.TrainingData``) as ``predictor`` (its index members
    in place, no spread yet) predicts it; samples with a covariate unknown are left out."""
    predictor.spread = {}  # the training split predicted without any
    if not proxy:
        return {}
    train = data.split["train"]
    raw, _ = predictor.predict(data.prep, train)
    X = spread_inputs(data.prep.features[train], data.prep.cov_raw[train], raw.value)
    names = (list(data.prep.feature_names) + [f"covariate_{c}" for c in predictor.covariates.names]
             + [f"output_{t}" for t in raw.value])
    out = {}
    for name, pred in proxy.items():
        error = training_error(raw.set_model[name], pred, data.truth[name][train])
        ok = ~raw.unknown & np.isfinite(error)
        if ok.sum() >= 2 * FOLDS:
            out[name] = fit_spread(X[ok], error[ok], names)
    return out
