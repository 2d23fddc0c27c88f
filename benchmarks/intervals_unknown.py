"""Item 5 of the interval work: the hematocrit interval's coverage where a lab does not know the
patient's sex and age, and out of fold on a cross-validated cohort.

    python3 benchmarks/intervals_unknown.py --model runs/latest/model.pt --cv runs/cv-s0

1. Fresh patients of the built-in generator (5,000, cached), predicted twice through the one
   predictor: with their sex and age, and with both unknown (the set model alone and the
   calibration fitted with every covariate unknown, as ``flowrbc predict`` does for a file
   without SEX/AGE keywords). Coverage, mean half-width and bias, overall and by condition.
2. ``--cv``: a ``flowrbc train --folds K`` run's ``oof.csv``, every patient's out-of-fold
   interval: coverage and mean half-width overall and by condition.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def table(rows: list[tuple]) -> None:
    print("| group | n | coverage | mean half-width | bias (pred − true) |")
    print("| --- | --- | --- | --- | --- |")
    for name, n, cov, hw, bias in rows:
        print(f"| {name} | {n:,} | {cov:.3f} | {hw:.2f} | {bias:+.2f} |")
    print()


def by_condition(cond: np.ndarray, truth: np.ndarray, pred: np.ndarray, hw: np.ndarray) -> list[tuple]:
    rows = []
    for name in ["all"] + sorted(set(cond)):
        at = np.ones(len(cond), bool) if name == "all" else cond == name
        inside = np.abs(pred[at] - truth[at]) <= hw[at]
        rows.append((name, int(at.sum()), float(inside.mean()), float(hw[at].mean()), float((pred[at] - truth[at]).mean())))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/latest/model.pt")
    ap.add_argument("--cv", type=Path, help="a `flowrbc train --folds K` run directory")
    ap.add_argument("--patients", type=int, default=5000)
    args = ap.parse_args()

    from flowrbc.io.builtin import DEFAULT_CELLS, FRESH_SEED, load_default_cohort
    from flowrbc.predictor import Predictor

    predictor = Predictor.load(args.model)
    fresh = load_default_cohort(args.patients, DEFAULT_CELLS, FRESH_SEED)
    prep = predictor.prepare_cohort(fresh)
    given, unknown = predictor.predict(prep, unknown_too=True)
    truth = fresh.samples["hematocrit"].to_numpy(dtype=np.float64)
    cond = fresh.samples["condition"].astype(str).to_numpy()
    for label, raw in (("sex and age known", given), ("sex and age unknown", unknown)):
        cal = predictor.calibrated(raw)
        print(f"**Fresh patients, {label}** ({args.model})\n")
        table(by_condition(cond, truth, cal["hematocrit"], cal["hematocrit_halfwidth"]))
    if args.cv:
        import pandas as pd

        oof = pd.read_csv(args.cv / "oof.csv")
        oof = oof[(oof["target"] == "hematocrit") & (oof["repeat"] == 0)]
        from flowrbc.io.builtin import DEFAULT_PATIENTS, DEFAULT_SEED

        cohort = load_default_cohort(DEFAULT_PATIENTS, DEFAULT_CELLS, DEFAULT_SEED)
        cond_cv = cohort.samples.loc[oof["sample_id"], "condition"].astype(str).to_numpy()
        print(f"**Out of fold, {args.cv}** (every patient of the built-in cohort once)\n")
        hw = (oof["high"] - oof["low"]).to_numpy() / 2
        centre = (oof["high"] + oof["low"]).to_numpy() / 2
        table(by_condition(cond_cv, oof["truth"].to_numpy(), centre, hw))


if __name__ == "__main__":
    main()
