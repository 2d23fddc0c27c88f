"""Out-of-fold predictions (``oof.csv``) and their statistics (``flowrbc.crossval``).

One row per sample, target and repeat: ``sample_id, repeat, fold, target, truth, model,
baseline, low, high, raw``. ``model`` is the calibrated predictor's value (a regression
target in its unit; a binary target's calibrated probability), ``baseline`` the moments
baseline's (value or probability), ``low``/``high`` the conformal interval (regression), ``raw``
the predictor before calibration (a binary target's logit). Floats are written with ``repr``,
so reading the file back gives the very numbers that were written.

``summarise`` turns the rows into the figures ``flowrbc train --folds`` prints: per repeat, over
every patient, the predictor and the baseline with the paired difference ± SE (paired t;
DeLong's paired SE for AUROC; ``flowrbc.evaluation``), interval coverage and calibration out
of fold; the same per fold, and the spread (SD) between folds and between repeats.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np

COLUMNS = ("sample_id", "repeat", "fold", "target", "truth", "model", "baseline", "low", "high", "raw")
FLOATS = ("truth", "model", "baseline", "low", "high", "raw")
SPREAD = {"regression": ("mse", "coverage"), "binary": ("auroc", "brier", "ece")}  # per-fold figures with an SD


def fold_rows(samples: dict, cohort, repeat: int, fold: int) -> dict[str, np.ndarray]:
    """A held-out fold's ``flowrbc.assess.sample_predictions`` -> rows (column -> array)."""
    idx = np.asarray(samples["idx"])
    ids = np.asarray(cohort.samples.index.astype(str))[idx]
    cols: dict[str, list] = {c: [] for c in COLUMNS}
    for name in samples["raw"]:  # the targets ("value" also holds each regression target's half-widths)
        value, n = samples["value"][name], len(idx)
        half = samples["halfwidth"].get(name)
        truth = (cohort.samples[name].to_numpy(dtype=np.float64, na_value=np.nan)[idx]
                 if name in cohort.samples.columns else np.full(n, np.nan))
        value = np.asarray(value, np.float64)
        cols["sample_id"].append(ids)
        cols["repeat"].append(np.full(n, repeat))
        cols["fold"].append(np.full(n, fold))
        cols["target"].append(np.full(n, name, dtype=object))
        cols["truth"].append(truth)
        cols["model"].append(value)
        cols["baseline"].append(np.asarray(samples["baseline"][name], np.float64))
        cols["low"].append(value - half if half is not None else np.full(n, np.nan))
        cols["high"].append(value + half if half is not None else np.full(n, np.nan))
        cols["raw"].append(np.asarray(samples["raw"][name], np.float64))
    return {c: np.concatenate(v) for c, v in cols.items()}


def to_csv(rows: dict[str, np.ndarray]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for i in range(len(rows["sample_id"])):
        writer.writerow([_cell(rows[c][i]) for c in COLUMNS])
    return buf.getvalue()


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return "" if not math.isfinite(v) else repr(float(v))
    return str(v)


def read_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Rows of an ``oof.csv`` (or of one fold's ``predictions.csv``)."""
    with open(path, newline="") as fh:
        records = list(csv.DictReader(fh))
    out: dict[str, np.ndarray] = {}
    for c in COLUMNS:
        values = [r[c] for r in records]
        if c in FLOATS:
            out[c] = np.array([float(v) if v != "" else np.nan for v in values], dtype=np.float64)
        elif c in ("repeat", "fold"):
            out[c] = np.array([int(v) for v in values], dtype=np.int64)
        else:
            out[c] = np.array(values, dtype=object)
    return out


def concat(parts: list[dict[str, np.ndarray]], order: list[str]) -> dict[str, np.ndarray]:
    """Rows of several folds, sorted by repeat, then the samples' ``order``, then target."""
    rows = {c: np.concatenate([p[c] for p in parts]) for c in COLUMNS}
    position = {s: i for i, s in enumerate(order)}
    targets = list(dict.fromkeys(rows["target"]))
    keys = np.lexsort((np.array([targets.index(t) for t in rows["target"]]),
                       np.array([position[s] for s in rows["sample_id"]]), rows["repeat"]))
    return {c: v[keys] for c, v in rows.items()}


# ----------------------------------------------------------------------------- statistics


def _kind(name: str) -> str:
    from flowrbc.prepare import CLASSIFICATION_TARGETS

    return "binary" if name in CLASSIFICATION_TARGETS else "regression"


def scores(rows: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, Any]:
    """The predictor, the baseline and model − baseline paired on the rows ``mask`` (per target,
    finite truth only): ``{"n", "model", "baseline", "paired"}``."""
    from flowrbc.calibration import calibrated_probability
    from flowrbc.evaluation import compare, standard_errors
    from flowrbc.metrics import classification_metrics, regression_metrics

    out: dict[str, Any] = {"n": int(len(set(rows["sample_id"][mask]))), "model": {}, "baseline": {}, "paired": {}}
    for name in dict.fromkeys(rows["target"][mask]):
        at = mask & (rows["target"] == name) & np.isfinite(rows["truth"])
        if not at.any():
            continue
        kind = _kind(name)
        y, p, b = rows["truth"][at], rows["model"][at], rows["baseline"][at]
        if kind == "regression":
            m, base = regression_metrics(y, p), regression_metrics(y, b)
            lo, hi = rows["low"][at], rows["high"][at]
            if np.isfinite(lo).all():
                m["coverage"] = float(np.mean((lo <= y) & (y <= hi)))
                m["interval_halfwidth"] = float(np.mean((hi - lo) / 2))
        else:
            m, base = classification_metrics(y, p), classification_metrics(y, b)
            m["ece_uncalibrated"] = classification_metrics(y, calibrated_probability(rows["raw"][at], 1.0))["ece"]
        out["model"][name] = dict(m, n=int(at.sum()), **standard_errors(kind, y, p))
        out["baseline"][name] = dict(base, **standard_errors(kind, y, b))
        out["paired"][name] = compare(kind, y, p, b)
    return out


def _spread(values: list[float]) -> dict[str, Any]:
    v = np.array([x if x is not None else np.nan for x in values], dtype=np.float64)
    ok = v[np.isfinite(v)]
    return {"values": v.tolist(), "mean": float(ok.mean()) if len(ok) else math.nan,
            "sd": float(ok.std(ddof=1)) if len(ok) > 1 else math.nan}


def _spreads(parts: list[dict]) -> dict[str, dict]:
    """Per target: each figure of ``SPREAD`` and each paired difference across ``parts``."""
    out: dict[str, dict] = {}
    for name in parts[0]["model"]:
        figures = {}
        for key in SPREAD[_kind(name)]:
            figures[key] = _spread([p["model"].get(name, {}).get(key) for p in parts])
        for key in parts[0]["paired"].get(name, {}):
            figures[f"paired_{key}"] = _spread([p["paired"].get(name, {}).get(key, {}).get("diff") for p in parts])
        out[name] = figures
    return out


def summarise(rows: dict[str, np.ndarray], folds: int, repeats: int) -> dict[str, Any]:
    """The cross-validated figures: ``runs`` (one per repeat: over every patient, per fold and
    the spread between folds), ``between_repeats`` (the spread of each repeat's figures over
    every patient), and the first repeat's figures at the top (``n``, ``model``, ``baseline``,
    ``paired``): every patient predicted once."""
    runs = []
    for r in range(repeats):
        mine = rows["repeat"] == r
        run = dict(scores(rows, mine), repeat=r)
        run["folds"] = [dict(scores(rows, mine & (rows["fold"] == k)), fold=k) for k in range(folds)]
        run["between_folds"] = _spreads(run["folds"])
        runs.append(run)
    first = runs[0]
    return {"folds": folds, "repeats": repeats, "n": first["n"], "model": first["model"],
            "baseline": first["baseline"], "paired": first["paired"], "runs": runs,
            "between_repeats": _spreads(runs) if repeats > 1 else {}}


def plain(obj):
    """JSON-ready: numpy scalars as Python numbers, non-finite floats as None."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------- in words


def summary_lines(cv: dict) -> list[str]:
    """The cross-validated figures in a few lines (``flowrbc evaluate``, the cohort report)."""
    from flowrbc.evaluation import verdict

    words = {"better": "the model better", "worse": "the baseline better", "tie": "a tie"}
    lines = ["this model was trained on every sample of this cohort: figures measured on it are in-sample; "
             "the cross-validated ones follow"] if cv.get("in_sample") else []
    lines += [f"cross-validated on its training cohort: {cv['folds']} folds"
             + (f" × {cv['repeats']} repeats" if cv.get("repeats", 1) > 1 else "")
             + f", each of {cv['n']:,} patients predicted by a model trained without them"]
    for name, m in cv["model"].items():
        base, paired = cv["baseline"].get(name, {}), cv["paired"].get(name, {})
        key = "mse" if "mse" in m else "auroc"
        d = paired.get(key)
        if d is None or m.get(key) is None or base.get(key) is None:
            continue
        text = (f"{name}: {key.upper()} {m[key]:.4g} against the moments baseline's {base[key]:.4g}, "
                f"Δ {d['diff']:+.3f} ± {d['se']:.3f} ({words[verdict(d, lower_is_better=key != 'auroc')]})")
        spread = cv["runs"][0]["between_folds"].get(name, {}).get(f"paired_{key}", {})
        if spread.get("sd") is not None:
            text += f"; Δ between folds SD {spread['sd']:.3f}"
        rep = cv.get("between_repeats", {}).get(name, {}).get(f"paired_{key}", {})
        if rep.get("sd") is not None:
            text += f", between repeats SD {rep['sd']:.3f}"
        if m.get("coverage") is not None:
            text += f"; interval coverage {m['coverage']:.1%} out of fold"
        if m.get("ece") is not None:
            text += f"; ECE {m['ece']:.3f} out of fold"
        lines.append(text)
    return lines
