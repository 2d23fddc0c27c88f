"""Predictors of several training runs on the same fresh patients, paired.

    flowrbc train --seed 0 --out runs/house-s0                       # 250-cell training sets
    flowrbc train --seed 0 --set-size all --out runs/all-s0          # every cell of each patient
    python3 benchmarks/cells_study.py runs/house-s0 runs/all-s0 [--patients 5000] [--cells 1000]

Each run's predictor (``flowrbc.predictor``) predicts the fresh built-in cohort of
``--patients`` x ``--cells`` (seed ``FRESH_SEED``, the cohort ``flowrbc train`` scores once),
reading each patient as it was trained (disjoint sets of its set size, or every cell) and,
with ``--all-cells``, every cell in one set whatever it was trained on. Printed: hematocrit
MSE and anemia AUROC of each run with their SEs, and each run against the first, paired per
patient (paired t for MSE, DeLong for AUROC), with the wall of its training and of this
prediction, and the load average.

``--gbm P C``: also the strongest baseline of this kind measured so far, fitted on the
training cohort the runs used (the built-in cohort of P patients x C cells, seed 0): boosted
trees on every index feature (mean, SD, 5-95th percentiles, skewness, kurtosis and 1-99th log
percentiles of volume, hemoglobin and cell Hb concentration, MCHC, RDW, HDW, shares of
micro-/macrocytic and hypo-/hyperchromic cells) with sex and age. Its settings are chosen on
the validation split, then it is refitted on training + validation patients (more than any
run trains on) and averaged over three seeds. Each run is then also paired against it.

``--precisions fp32 auto``: each run predicted in each precision (``flowrbc.precision``; "auto"
is bf16 inference on a CPU with bf16 matrix units), paired against the first row: what bf16
costs in accuracy, on the same patients.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories (model.pt, metrics.json)")
    ap.add_argument("--patients", type=int, default=5000)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--all-cells", action="store_true", help="every cell in one set, whatever the training")
    ap.add_argument("--precisions", nargs="+", default=[None], choices=["auto", "bf16", "fp32"],
                    help="predict each run in each of these (default: the precision it was validated in)")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--gbm", type=int, nargs=2, metavar=("P", "C"), help="also the index-feature GBM fitted on "
                    "the built-in cohort of P patients x C cells")
    args = ap.parse_args()

    from flowrbc.evaluation import paired, paired_auroc
    from flowrbc.io.builtin import FRESH_SEED, load_default_cohort
    from flowrbc.predictor import Predictor

    fresh = load_default_cohort(args.patients, args.cells, FRESH_SEED)
    y_h = fresh.samples["hematocrit"].to_numpy(float)
    y_a = fresh.samples["anemia"].to_numpy(float)
    rows, first = [], None
    gbm = None
    if args.gbm:
        t0 = time.perf_counter()
        gbm = index_gbm(load_default_cohort(args.gbm[0], args.gbm[1], 0), fresh)
        sq = (gbm - y_h) ** 2
        print(f"index-feature GBM ({args.gbm[0]} x {args.gbm[1]}): Hct MSE {sq.mean():.3f} ± "
              f"{paired(sq, np.zeros_like(sq))['se']:.3f}; {time.perf_counter() - t0:.0f} s", flush=True)
        rows.append({"run": "index-feature GBM", "mse": float(sq.mean()), "mse_se": paired(sq, np.zeros_like(sq))["se"]})
    for run, precision in ((r, p) for r in args.runs for p in args.precisions):
        predictor = Predictor.load(run / "model.pt", precision=precision)
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        raw, _ = predictor.predict(predictor.prepare_cohort(fresh), all_cells=args.all_cells)
        wall = time.perf_counter() - t0
        value = predictor.calibrated(raw)
        hct, prob = value["hematocrit"], value["anemia"]
        sq = (hct - y_h) ** 2
        auroc = paired_auroc(y_a, prob)
        trained = json.loads((run / "metrics.json").read_text())
        row = {"run": str(run), "precision": predictor.precision, "set_size": predictor.set_size, "all_cells": args.all_cells,
               "predictor": trained.get("predictor"), "mse": float(sq.mean()),
               "mse_se": paired(sq, np.zeros_like(sq))["se"], "auroc": auroc["diff"], "auroc_se": auroc["se"],
               "train_wall_s": trained.get("wall_time_s"), "predict_wall_s": wall,
               "load": [load0, os.getloadavg()[0]]}
        if first is None:
            first = (sq, prob)
        else:
            d = paired(sq, first[0])
            a = paired_auroc(y_a, prob, first[1])
            row.update(vs_first_mse=d["diff"], vs_first_mse_se=d["se"], vs_first_auroc=a["diff"],
                       vs_first_auroc_se=a["se"])
        if gbm is not None:
            d = paired(sq, (gbm - y_h) ** 2)
            row.update(vs_gbm_mse=d["diff"], vs_gbm_mse_se=d["se"])
            print(f"  {run} against the index-feature GBM: {d['diff']:+.3f} ± {d['se']:.3f}", flush=True)
        rows.append(row)
        vs = (f"  vs first: MSE {row['vs_first_mse']:+.3f} ± {row['vs_first_mse_se']:.3f}, AUROC "
              f"{row['vs_first_auroc']:+.4f} ± {row['vs_first_auroc_se']:.4f}" if "vs_first_mse" in row else "")
        print(f"{run} ({predictor.precision}): set size {predictor.set_size or 'all'}{' (read: all cells)' if args.all_cells else ''}, "
              f"{row['predictor']}: Hct MSE {row['mse']:.3f} ± {row['mse_se']:.3f}, AUROC {row['auroc']:.4f} ± "
              f"{row['auroc_se']:.4f}; training {row['train_wall_s']:.0f} s, prediction {wall:.1f} s, "
              f"load {load0:.2f}{vs}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def index_gbm(train_cohort, fresh, seeds=(0, 1, 2)) -> np.ndarray:
    """The index-feature GBM of ``--gbm``: fitted on ``train_cohort``'s train + val split,
    settings chosen on val; its hematocrit predictions for ``fresh`` -> (n_fresh,)."""
    from sklearn.ensemble import HistGradientBoostingRegressor
    from threadpoolctl import threadpool_limits

    from flowrbc.hybrid import index_features

    def table(cohort):
        v, h = cohort.X[:, cohort.role_columns(("volume", "hemoglobin"))].T
        F, _ = index_features(v, h, cohort.offsets)
        cov = cohort.samples[["sex", "age"]].apply(lambda c: c.map({"F": 0.0, "M": 1.0}) if c.name == "sex" else c)
        return np.concatenate([F, cov.to_numpy(float)], axis=1), cohort.samples["hematocrit"].to_numpy(float)

    X, y = table(train_cohort)
    split = train_cohort.samples["split"].astype(str).to_numpy()
    tr, va = split == "train", split == "val"
    grid = [dict(learning_rate=0.05, max_iter=300, max_leaf_nodes=15, min_samples_leaf=20),
            dict(learning_rate=0.05, max_iter=600, max_leaf_nodes=7, min_samples_leaf=40),
            dict(learning_rate=0.1, max_iter=100, max_leaf_nodes=31, min_samples_leaf=20)]
    with threadpool_limits(1):
        losses = [np.mean((HistGradientBoostingRegressor(early_stopping=False, random_state=0, **g)
                           .fit(X[tr], y[tr]).predict(X[va]) - y[va]) ** 2) for g in grid]
        best = grid[int(np.argmin(losses))]
        fit = tr | va
        Xf, _ = table(fresh)
        return np.mean([HistGradientBoostingRegressor(early_stopping=False, random_state=s, **best)
                        .fit(X[fit], y[fit]).predict(Xf) for s in seeds], axis=0)


if __name__ == "__main__":
    main()
