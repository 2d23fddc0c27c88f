r"""Two predictors scored on the same patients: paired differences with standard errors.

A difference of two mean losses measured on the same patients has the standard error of the
per-patient differences, not the root sum of the two SEs: with ``d_i = l_a(i) − l_b(i)``,

    diff = mean(d),    SE = sd(d) / sqrt(n)

(a paired t). For AUROC, which is not a mean of per-patient terms, the SE comes from a
paired bootstrap: both predictors are re-scored on the same resampled patients. A
difference within 2 SE is a tie, whatever its sign. numpy only.
"""

from __future__ import annotations

import math

import numpy as np

TIE_SE = 2.0  # |diff| within this many SEs: a tie


def paired(loss_a: np.ndarray, loss_b: np.ndarray) -> dict[str, float]:
    """Mean of ``loss_a − loss_b`` (per patient) and its SE: negative = ``a`` better."""
    d = np.asarray(loss_a, np.float64) - np.asarray(loss_b, np.float64)
    n = len(d)
    se = float(d.std(ddof=1) / math.sqrt(n)) if n > 1 else math.nan
    return {"diff": float(d.mean()) if n else math.nan, "se": se, "n": n}


def auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by ranks (Mann–Whitney U / n_pos n_neg; ties count half)."""
    y = np.asarray(y) > 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(score, kind="mergesort")
    s = np.asarray(score, np.float64)[order]
    ranks = np.empty(len(s))
    ranks[order] = _average_ranks(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _average_ranks(sorted_values: np.ndarray) -> np.ndarray:
    """1-based ranks of an ascending array, ties given their average rank."""
    n = len(sorted_values)
    new = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    start = np.flatnonzero(new)
    end = np.concatenate([start[1:], [n]])
    return np.repeat((start + end + 1) / 2.0, end - start)


def paired_auroc(y: np.ndarray, a: np.ndarray, b: np.ndarray | None = None, *, boots: int = 400,
                 seed: int = 0) -> dict[str, float]:
    """AUROC(a) − AUROC(b) on the same patients, SE by a paired bootstrap; with ``b`` None,
    AUROC(a) itself and its bootstrap SE."""
    y, a = np.asarray(y), np.asarray(a, np.float64)
    b = None if b is None else np.asarray(b, np.float64)

    def stat(i):
        return auroc(y[i], a[i]) - (auroc(y[i], b[i]) if b is not None else 0.0)

    rng = np.random.default_rng(seed)
    diffs = np.asarray([stat(rng.integers(0, len(y), len(y))) for _ in range(boots)])
    diffs = diffs[np.isfinite(diffs)]
    return {"diff": stat(np.arange(len(y))), "se": float(diffs.std(ddof=1)) if len(diffs) > 1 else math.nan,
            "n": len(y)}


def compare(kind: str, y: np.ndarray, a: np.ndarray, b: np.ndarray, seed: int = 0) -> dict[str, dict[str, float]]:
    """Paired differences of predictor ``a`` against ``b`` on one target (finite labels only).

    regression (``kind`` "regression"): squared error -> ``{"mse": ...}``; binary
    (probabilities): ``{"brier": ..., "auroc": ...}`` (for AUROC, positive = ``a`` better).
    """
    y, a, b = (np.asarray(v, np.float64) for v in (y, a, b))
    ok = np.isfinite(y) & np.isfinite(a) & np.isfinite(b)
    y, a, b = y[ok], a[ok], b[ok]
    if kind == "regression":
        return {"mse": paired((a - y) ** 2, (b - y) ** 2)}
    return {"brier": paired((a - y) ** 2, (b - y) ** 2), "auroc": paired_auroc(y, a, b, seed=seed)}


def standard_errors(kind: str, y: np.ndarray, pred: np.ndarray, seed: int = 0) -> dict[str, float]:
    """SE of one predictor's MSE (regression) or of its Brier score and AUROC (binary)."""
    y, pred = np.asarray(y, np.float64), np.asarray(pred, np.float64)
    if kind == "regression":
        return {"mse_se": paired((pred - y) ** 2, np.zeros_like(y))["se"]}
    return {"brier_se": paired((pred - y) ** 2, np.zeros_like(y))["se"],
            "auroc_se": paired_auroc(y, pred, seed=seed)["se"]}


def verdict(stat: dict[str, float], lower_is_better: bool = True) -> str:
    """'a better' / 'b better' / 'tie' at ``TIE_SE`` standard errors."""
    d, se = stat["diff"], stat["se"]
    if not (math.isfinite(d) and math.isfinite(se)) or abs(d) <= TIE_SE * se:
        return "tie"
    return "better" if (d < 0) == lower_is_better else "worse"
