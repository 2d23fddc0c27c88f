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
    ap.add_argument("--json", type=Path, help="also write the rows here")
    args = ap.parse_args()

    from flowrbc.evaluation import paired, paired_auroc
    from flowrbc.io.builtin import FRESH_SEED, load_default_cohort
    from flowrbc.predictor import Predictor

    fresh = load_default_cohort(args.patients, args.cells, FRESH_SEED)
    y_h = fresh.samples["hematocrit"].to_numpy(float)
    y_a = fresh.samples["anemia"].to_numpy(float)
    rows, first = [], None
    for run in args.runs:
        predictor = Predictor.load(run / "model.pt")
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        raw, _ = predictor.predict(predictor.prepare_cohort(fresh), all_cells=args.all_cells)
        wall = time.perf_counter() - t0
        value = predictor.calibrated(raw)
        hct, prob = value["hematocrit"], value["anemia"]
        sq = (hct - y_h) ** 2
        auroc = paired_auroc(y_a, prob)
        trained = json.loads((run / "metrics.json").read_text())
        row = {"run": str(run), "set_size": predictor.set_size, "all_cells": args.all_cells,
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
        rows.append(row)
        vs = (f"  vs first: MSE {row['vs_first_mse']:+.3f} ± {row['vs_first_mse_se']:.3f}, AUROC "
              f"{row['vs_first_auroc']:+.4f} ± {row['vs_first_auroc_se']:.4f}" if "vs_first_mse" in row else "")
        print(f"{run}: set size {predictor.set_size or 'all'}{' (read: all cells)' if args.all_cells else ''}, "
              f"{row['predictor']}: Hct MSE {row['mse']:.3f} ± {row['mse_se']:.3f}, AUROC {row['auroc']:.4f} ± "
              f"{row['auroc_se']:.4f}; training {row['train_wall_s']:.0f} s, prediction {wall:.1f} s, "
              f"load {load0:.2f}{vs}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
