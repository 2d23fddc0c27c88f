"""Calibration fitted on the validation split: conformal intervals and temperature scaling.

numpy only (no scikit-learn): the predict path applies these.

Split conformal (Vovk et al.; Lei et al. 2018): with absolute residuals r_1..r_n of a fixed
model on held-out data and coverage 1 − α, the interval ŷ ± q where q is the
⌈(n + 1)(1 − α)⌉-th smallest r_i covers a new exchangeable case with probability ≥ 1 − α
(q = ∞ when that rank exceeds n). Normalised (``fit_normalised_conformal``): the same rank
of |r_i| / σ_i for a spread σ fitted on other data gives ŷ ± q σ(x), a width per case with
the same guarantee (``flowrbc.spread``).

Temperature scaling (Guo et al. 2017): p = σ(z / T) with the single T > 0 that minimises the
validation negative log-likelihood; it changes confidence, never the ranking (AUROC).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from flowrbc.errors import FlowrbcError


@dataclass
class ConformalInterval:
    halfwidth: float  # q, in the target's units
    coverage: float  # the nominal 1 − α it was fitted for
    n: int  # calibration cases

    def interval(self, pred: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        pred = np.asarray(pred, dtype=np.float64)
        return pred - self.halfwidth, pred + self.halfwidth

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ConformalInterval":
        return cls(float(d["halfwidth"]), float(d["coverage"]), int(d["n"]))


def conformal_quantile(residuals: np.ndarray, coverage: float) -> float:
    """The ⌈(n + 1) · coverage⌉-th smallest |residual| (∞ when that rank exceeds n)."""
    if not 0.0 < coverage < 1.0:
        raise FlowrbcError(f"--coverage {coverage}: must be strictly between 0 and 1")
    r = np.sort(np.abs(np.asarray(residuals, dtype=np.float64)))
    r = r[np.isfinite(r)]
    rank = math.ceil((len(r) + 1) * coverage)
    return math.inf if rank > len(r) else float(r[rank - 1])


def calibrated_quantile(cal: dict, key: str, scores: str, coverage: float | None = None) -> float | None:
    """``cal[key]``, the quantile fitted for ``cal["coverage"]``, when ``coverage`` is None or
    that one; else the conformal quantile of the sorted ``cal[scores]`` for ``coverage``. None
    when ``cal`` lacks them or the quantile is infinite."""
    if key not in cal:
        return None
    if coverage is None or math.isclose(coverage, cal["coverage"]):
        q = float(cal[key])
    elif scores in cal:
        q = conformal_quantile(np.asarray(cal[scores]), coverage)
    else:
        return None
    return q if math.isfinite(q) else None


def fit_conformal(pred: np.ndarray, y: np.ndarray, coverage: float = 0.9) -> ConformalInterval:
    """Fit the split-conformal half-width on held-out predictions ``pred`` of targets ``y``."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(y) & np.isfinite(pred)
    q = conformal_quantile(pred[keep] - y[keep], coverage)
    return ConformalInterval(halfwidth=q, coverage=coverage, n=int(keep.sum()))


def fit_normalised_conformal(pred: np.ndarray, y: np.ndarray, spread: np.ndarray, coverage: float = 0.9) -> dict:
    """Normalised split conformal (``flowrbc.spread``): held-out predictions ``pred`` of ``y``
    with a spread ``spread`` (> 0) each, fitted elsewhere -> ``{"scale": q, "scores": sorted
    |pred − y| / spread}``; the interval of a new case is pred ± q · its spread, and any other
    coverage's q is ``conformal_quantile(scores, coverage)``."""
    pred, y, spread = (np.asarray(a, np.float64) for a in (pred, y, spread))
    keep = np.isfinite(y) & np.isfinite(pred) & np.isfinite(spread) & (spread > 0)
    scores = np.sort(np.abs(pred[keep] - y[keep]) / spread[keep])
    return {"scale": conformal_quantile(scores, coverage), "scores": scores.tolist()}


def interval_coverage(pred: np.ndarray, y: np.ndarray, cal: ConformalInterval) -> float:
    lo, hi = cal.interval(pred)
    y = np.asarray(y, np.float64)
    return float(np.mean((y >= lo) & (y <= hi)))


def sigmoid(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # overflow-free σ(z)


def binary_nll(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean −[y log σ(z) + (1 − y) log(1 − σ(z))], computed stably as softplus(z) − y·z."""
    z, y = np.asarray(logits, np.float64), np.asarray(y, np.float64)
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: np.ndarray, y: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """T minimising NLL(z / T, y): golden-section search over log T (the NLL is unimodal in
    1/T for fixed logits), to a relative precision of about 1e-6."""
    z, y = np.asarray(logits, np.float64), np.asarray(y, np.float64)
    keep = np.isfinite(z) & np.isfinite(y)
    z, y = z[keep], y[keep]
    if len(z) == 0 or y.min() == y.max():
        return 1.0  # one class only: nothing to calibrate against
    a, b = math.log(bounds[0]), math.log(bounds[1])
    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = binary_nll(z / math.exp(c), y), binary_nll(z / math.exp(d), y)
    while b - a > 1e-6:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = binary_nll(z / math.exp(c), y)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = binary_nll(z / math.exp(d), y)
    return float(math.exp((a + b) / 2.0))


def calibrated_probability(logits: np.ndarray, temperature: float) -> np.ndarray:
    return sigmoid(np.asarray(logits, np.float64) / temperature)
