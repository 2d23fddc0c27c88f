"""Metrics and the moment-feature baseline.

Moment features are what a hematology analyser reports from the same cells (MCV, MCH, MCHC,
RDW, HDW, percentiles, shares of cells by volume, content and concentration). They are computed
per sample from one cell matrix and its offsets with segment reductions (no per-sample Python),
with numpy only: the predict path uses them for its distribution-shift QC. scikit-learn is
imported inside the functions that need it (AUROC/AUPRC, the gradient-boosting baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (5, 25, 50, 75, 95)

# The red-cell terms, per cell: the fixed bounds of the volume / hemoglobin-concentration
# cytogram of optical analysers (ADVIA 120/2120 type), the standard meaning of "% micro /
# macro / hypo / hyper cells". Defined here alone; the report's indices read them.
MICRO_FL = 60.0  # volume below: a microcytic cell
MACRO_FL = 120.0  # volume above: a macrocytic cell
HYPO_CHC = 28.0  # cell hemoglobin concentration (g/dL) below: a hypochromic cell
HYPER_CHC = 41.0  # cell hemoglobin concentration (g/dL) above: a hyperchromic cell

# Cut-offs of three moment features, not the cell terms above: the shares of cells below and
# above the normal range of the MCV (80-100 fL) and below that of the MCH (27 pg). Trained
# checkpoints read these features (by position), so the values stay.
FEATURE_VOLUME_FL = (80.0, 100.0)
FEATURE_HEMOGLOBIN_PG = 27.0


def _segments(offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.asarray(offsets, dtype=np.int64)
    counts = np.diff(offsets)
    if (counts < 1).any():
        bad = int(np.flatnonzero(counts < 1)[0])
        raise ValueError(f"offsets: sample {bad} has no cells")
    return offsets, counts


_CANCEL_RATIO = 1e8  # mean^2 / var above which E[x^2] - mean^2 keeps fewer than ~8 digits (float64)


def segment_mean_sd(values: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-sample mean and SD of ``values`` (n_cells,) split by ``offsets``: the one SD of
    flowrbc's indices (RDW, HDW, the QC's chdw, the moment features).

    The population SD (ddof 0): the spread of the cells measured, as an analyser's RDW and
    HDW describe the sample's own cells, not an estimate for a larger population. The two
    differ by a factor sqrt((n - 1) / n), 0.05 % at 1,000 cells; a one-cell sample has SD 0.
    The moment features that trained checkpoints read were computed with it.

    One pass of sums, :math:`\sigma^2 = \overline{x^2} - \bar x^2`; the samples where that
    cancels (:math:`\bar x^2 > 10^8 \sigma^2`, e.g. a constant or one-cell sample) are
    summed again as squared deviations from their mean.
    """
    offsets, counts = _segments(offsets)
    v = np.asarray(values, dtype=np.float64)
    starts = offsets[:-1]
    mean = np.add.reduceat(v, starts) / counts
    var = np.maximum(np.add.reduceat(np.square(v), starts) / counts - mean * mean, 0.0)
    bad = np.flatnonzero(mean * mean > _CANCEL_RATIO * var)
    if len(bad):
        n = counts[bad]
        first = np.cumsum(n) - n  # each bad sample's start in the gathered cells
        rows = np.repeat(starts[bad] - first, n) + np.arange(n.sum())
        centred = v[rows] - np.repeat(mean[bad], n)
        var[bad] = np.add.reduceat(centred * centred, first) / n
    return mean, np.sqrt(var)


_BUCKET_RATIO = 1.25  # samples padded into one block differ in length by less than this factor
_BLOCK_CELLS = 1 << 22  # padded cells per sorted block (32 MiB of float64): bounds temporary memory


def segment_percentiles(values: np.ndarray, offsets: np.ndarray, qs=PERCENTILES) -> np.ndarray:
    r"""Per-sample percentiles (n_samples, len(qs)), equal to ``np.percentile`` on each segment.

    Linear interpolation: percentile q of a sorted segment s of n cells sits at the virtual
    index :math:`v = (n - 1)\,q/100`; with :math:`j = \lfloor v \rfloor`, :math:`g = v - j` it is
    :math:`s_j + g\,(s_{j+1} - s_j)` (numpy's two-sided form of that formula, so the results
    are bit-identical). A segment holding NaN gives NaN.

    No global sort: samples are grouped by length (within a factor ``_BUCKET_RATIO``), each
    group is laid out as rows of a NaN-padded matrix (NaN sorts last) and sorted row-wise.
    Samples of equal length stored one after another are a reshape of ``values`` (no gather).
    """
    offsets, counts = _segments(offsets)
    values = np.asarray(values)
    q = np.true_divide(np.asarray(qs, dtype=np.float64), 100)  # as np.percentile divides
    out = np.empty((len(counts), len(q)), dtype=np.float64)
    for idx in _length_blocks(counts):
        block = _sorted_block(values, offsets, counts, idx)  # (len(idx), max n) sorted rows
        out[idx] = _interpolate(block, counts[idx], q)
    return out


def _length_blocks(counts: np.ndarray) -> list[np.ndarray]:
    """Sample indices in groups of similar length, each at most ``_BLOCK_CELLS`` padded cells."""
    order = np.argsort(counts, kind="stable")  # over samples, not cells
    key = np.floor(np.log(counts[order]) / np.log(_BUCKET_RATIO)).astype(np.int64)
    bounds = np.flatnonzero(np.diff(key)) + 1
    blocks = []
    for group in np.split(order, bounds):
        rows = max(1, _BLOCK_CELLS // int(counts[group].max()))
        blocks += [group[i : i + rows] for i in range(0, len(group), rows)]
    return blocks


def _sorted_block(values: np.ndarray, offsets: np.ndarray, counts: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Cells of samples ``idx`` as NaN-padded rows, each sorted ascending."""
    n = counts[idx]
    width = int(n.max())
    first, last = int(idx[0]), int(idx[-1])
    if n.min() == width and last - first == len(idx) - 1:  # equal lengths, stored in a run
        return np.sort(values[offsets[first] : offsets[last + 1]].reshape(len(idx), width), axis=1)
    cols = np.arange(width)
    real = cols < n[:, None]  # (rows, width)
    dtype = np.result_type(values.dtype, np.float32)  # floats keep their width; NaN needs a float
    block = values[np.where(real, offsets[idx, None] + cols, 0)].astype(dtype, copy=False)
    block[~real] = np.nan
    block.sort(axis=1)
    return block


def _interpolate(block: np.ndarray, n: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Linear interpolation between order statistics, in numpy's arithmetic: (rows, Q)."""
    virtual = (n[:, None] - 1) * q[None, :]  # (rows, Q)
    lo = np.floor(virtual)
    gamma = virtual - lo
    lo = np.minimum(lo.astype(np.int64), n[:, None] - 1)
    hi = np.minimum(lo + 1, n[:, None] - 1)
    rows = np.arange(len(block))[:, None]
    a, b = block[rows, lo].astype(np.float64), block[rows, hi].astype(np.float64)
    diff = b - a
    result = np.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)
    result[np.isnan(block[rows[:, 0], n - 1])] = np.nan  # NaN sorts last: a NaN segment
    return result


def segment_fraction(mask: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    offsets, counts = _segments(offsets)
    return np.add.reduceat(mask, offsets[:-1], dtype=np.int64) / counts


def moment_features(volume: np.ndarray, hemoglobin: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Analyser-style features per sample -> ``(F (n_samples, n_features), names)``.

    volume in fL and hemoglobin content in pg per cell; cell Hb concentration
    CHC = 100 · Hb / volume (g/dL); MCV, MCH = means; MCHC = 100 · MCH / MCV;
    RDW = 100 · SD(volume) / MCV (%); HDW = SD(CHC) (g/dL). Percentiles are order statistics,
    so they are taken in the input's own precision (float32 sorts faster; the same values).
    """
    given = {"volume": np.asarray(volume), "hemoglobin": np.asarray(hemoglobin)}
    volume = given["volume"].astype(np.float64, copy=False)
    hemoglobin = given["hemoglobin"].astype(np.float64, copy=False)
    chc = 100.0 * hemoglobin / np.maximum(volume, 1e-6)
    cols: list[np.ndarray] = []
    names: list[str] = []
    for label, values in (("volume", volume), ("hemoglobin", hemoglobin), ("chc", chc)):
        mean, sd = segment_mean_sd(values, offsets)
        cols += [mean, sd]
        names += [f"{label}_mean", f"{label}_sd"]
        pct = segment_percentiles(given.get(label, values), offsets)
        cols += list(pct.T)
        names += [f"{label}_p{q}" for q in PERCENTILES]
    mcv, mch = cols[0], cols[7]
    cols += [100.0 * mch / mcv, 100.0 * cols[1] / mcv, cols[15]]
    names += ["mchc", "rdw", "hdw"]
    low_fl, high_fl = FEATURE_VOLUME_FL
    fractions = {  # frac_chc_low / high: the share of hypo- / hyperchromic cells
        f"frac_volume_below_{low_fl:g}": volume < low_fl,
        f"frac_volume_above_{high_fl:g}": volume > high_fl,
        f"frac_hemoglobin_below_{FEATURE_HEMOGLOBIN_PG:g}": hemoglobin < FEATURE_HEMOGLOBIN_PG,
        "frac_chc_low": chc < HYPO_CHC,
        "frac_chc_high": chc > HYPER_CHC,
    }
    for name, mask in fractions.items():
        cols.append(segment_fraction(mask, offsets))
        names.append(name)
    return np.stack(cols, axis=1), names


SHAPE_PERCENTILES = (1, 10, 90, 99)


def shape_features(volume: np.ndarray, hemoglobin: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, list[str]]:
    r"""The shape of each sample's log-scale distributions -> ``(S (n_samples, 19), names)``.

    For :math:`x` = log volume, log hemoglobin content and log CHC of a sample's cells, with
    central moments :math:`m_k = \overline{(x - \bar x)^k}`: skewness :math:`m_3 / m_2^{3/2}`,
    excess kurtosis :math:`m_4 / m_2^2 - 3`, the tail percentiles ``SHAPE_PERCENTILES``; and
    the correlation of log volume with log hemoglobin. What the analyser indices leave out
    (tails, asymmetry, a second population's shoulder), for the index members of the default
    predictor (``flowrbc.hybrid``). A one-cell sample has NaN moments.
    """
    offsets, counts = _segments(offsets)
    starts = offsets[:-1]
    log_v = np.log(np.maximum(np.asarray(volume, dtype=np.float64), 1e-6))
    log_h = np.log(np.maximum(np.asarray(hemoglobin, dtype=np.float64), 1e-6))
    cols: list[np.ndarray] = []
    names: list[str] = []
    centred = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        for label, x in (("volume", log_v), ("hemoglobin", log_h), ("chc", log_h - log_v + math.log(100.0))):
            d = x - np.repeat(np.add.reduceat(x, starts) / counts, counts)  # (n_cells,) centred
            d2 = d * d
            m2, m3, m4 = (np.add.reduceat(t, starts) / counts for t in (d2, d2 * d, d2 * d2))
            cols += [m3 / m2**1.5, m4 / (m2 * m2) - 3.0]
            cols += list(segment_percentiles(x.astype(np.float32), offsets, SHAPE_PERCENTILES).T)
            names += [f"log_{label}_skew", f"log_{label}_kurtosis"] + [f"log_{label}_p{q}" for q in SHAPE_PERCENTILES]
            centred[label] = (d, m2)
        (dv, vv), (dh, vh) = centred["volume"], centred["hemoglobin"]
        cols.append(np.add.reduceat(dv * dh, starts) / counts / np.sqrt(vv * vh))
    names.append("log_volume_hemoglobin_corr")
    return np.stack(cols, axis=1), names


# ----------------------------------------------------------------------------- metrics


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MSE, MAE, RMSE and R² = 1 − SSE / SST."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    err = pred - y
    sst = float(((y - y.mean()) ** 2).sum())
    return {
        "mse": float(np.mean(err**2)),
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": 1.0 - float((err**2).sum()) / sst if sst > 0 else math.nan,
    }


def expected_calibration_error(y: np.ndarray, prob: np.ndarray, bins: int = 15) -> float:
    """ECE = Σ_b (n_b / n) · |mean(y)_b − mean(p)_b| over equal-width probability bins.

    Bins are [0, 1/B), ..., [(B−1)/B, 1] (a probability of exactly 1 falls in the last bin).
    """
    y, prob = np.asarray(y, np.float64), np.asarray(prob, np.float64)
    if len(y) == 0:
        return math.nan
    which = np.minimum((prob * bins).astype(np.int64), bins - 1)
    gap = np.abs(np.bincount(which, y, bins) - np.bincount(which, prob, bins))
    return float(gap.sum() / len(y))  # Σ_b n_b/n · |Σy − Σp| / n_b


def reliability_curve(y: np.ndarray, prob: np.ndarray, bins: int = 10) -> dict[str, list[float]]:
    """Per-bin mean predicted probability, observed frequency and count (for the diagram)."""
    y, prob = np.asarray(y, np.float64), np.asarray(prob, np.float64)
    which = np.minimum((prob * bins).astype(np.int64), bins - 1)
    n = np.bincount(which, minlength=bins)
    keep = n > 0
    return {
        "predicted": (np.bincount(which, prob, bins)[keep] / n[keep]).tolist(),
        "observed": (np.bincount(which, y, bins)[keep] / n[keep]).tolist(),
        "count": n[keep].tolist(),
    }


def classification_metrics(y: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Accuracy, AUROC, AUPRC (average precision), Brier score and ECE for a binary target."""
    y = np.asarray(y).astype(np.float64)
    prob = np.asarray(prob, np.float64)
    out = {
        "accuracy": float(np.mean((prob >= threshold) == (y > 0.5))),
        "brier": float(np.mean((prob - y) ** 2)),
        "ece": expected_calibration_error(y, prob),
        "auroc": math.nan,
        "auprc": math.nan,
    }
    if 0 < y.sum() < len(y):  # both classes present
        from sklearn.metrics import average_precision_score, roc_auc_score

        out["auroc"] = float(roc_auc_score(y, prob))
        out["auprc"] = float(average_precision_score(y, prob))
    return out


def target_metrics(target: str, y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Regression metrics for a continuous target, classification metrics for ``anemia``."""
    return classification_metrics(y, pred) if is_binary(target) else regression_metrics(y, pred)


def is_binary(target: str) -> bool:
    return target == "anemia"


# ----------------------------------------------------------------------------- baseline


@dataclass
class MomentBaseline:
    """Gradient-boosted trees on moment features, one model per target, chosen on validation."""

    feature_names: list[str]
    models: dict[str, Any] = field(default_factory=dict)
    params: dict[str, dict] = field(default_factory=dict)

    def predict(self, features: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for target, model in self.models.items():
            if is_binary(target):
                out[target] = model.predict_proba(features)[:, 1]
            else:
                out[target] = model.predict(features)
        return out


# Small grid: shallow vs deeper trees, slow vs faster learning; early stopping off so that
# the validation split alone chooses (and results do not depend on an inner random split).
_GRID = (
    {"learning_rate": 0.05, "max_iter": 200, "max_leaf_nodes": 15, "min_samples_leaf": 20},
    {"learning_rate": 0.1, "max_iter": 100, "max_leaf_nodes": 7, "min_samples_leaf": 20},
)


def fit_moment_baseline(
    features: np.ndarray,
    targets: dict[str, np.ndarray],
    train: np.ndarray,
    val: np.ndarray,
    names: list[str],
    seed: int = 0,
) -> MomentBaseline:
    """Fit on the ``train`` rows, pick the grid point with the best validation loss (MSE or
    log loss) for each target, then keep that model (fitted on train only)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    # one OpenMP thread: on a small or busy CPU, more threads thrash (10× slower measured)
    with threadpool_limits(1):
        return _fit_grid(features, targets, train, val, names, seed,
                         HistGradientBoostingRegressor, HistGradientBoostingClassifier)


def _fit_grid(features, targets, train, val, names, seed, regressor, classifier) -> MomentBaseline:
    baseline = MomentBaseline(feature_names=list(names))
    for target, y in targets.items():
        tr = train & np.isfinite(y)
        va = val & np.isfinite(y)
        best, best_loss = None, math.inf
        for params in _GRID:
            if is_binary(target):
                model = classifier(early_stopping=False, random_state=seed, **params)
                model.fit(features[tr], y[tr].astype(int))
                p = np.clip(model.predict_proba(features[va])[:, 1], 1e-7, 1 - 1e-7)
                yv = y[va]
                loss = float(-np.mean(yv * np.log(p) + (1 - yv) * np.log(1 - p)))
            else:
                model = regressor(early_stopping=False, random_state=seed, **params)
                model.fit(features[tr], y[tr])
                loss = float(np.mean((model.predict(features[va]) - y[va]) ** 2))
            if loss < best_loss:
                best, best_loss = (model, params), loss
        baseline.models[target], baseline.params[target] = best
    return baseline
