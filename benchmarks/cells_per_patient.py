"""How much each cell is worth: the default recipe on built-in cohorts of 250 to 10,000 cells
per patient, scored on fresh patients with as many cells.

    python3 benchmarks/cells_per_patient.py --cells 250 1000 2500 10000 --out benchmarks/cells_per_patient.json
    python3 benchmarks/cells_per_patient.py --plot docs/cells_study.png --out benchmarks/cells_per_patient.json

Each point is one `flowrbc train --cells C --seed S --fresh F` run (its own process: its wall
and peak resident memory are measured from outside), on a cohort of ``--patients`` patients
(70 % train) with C cells each and a fresh cohort of F patients with C cells each. Rows per
point, all on the same fresh patients: the moments baseline (gradient boosting on the indices
of every cell), the default predictor reading disjoint sets of 250 cells (at most 10), the same
predictor reading every cell in one set (paired against the sets), the set model alone, the
exact-population reference (the moments learner given each patient's population parameters)
and the bound (expected MSE; infinitely many cells). Points already in ``--out`` are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def run_point(cells: int, patients: int, fresh: int, seed: int, runs: Path) -> dict:
    run = runs / f"cells-{cells}-s{seed}"
    cmd = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "flowrbc", "train", "--patients", str(patients),
           "--cells", str(cells), "--fresh", str(fresh), "--seed", str(seed), "--out", str(run)]
    load0 = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    peak_kb, wall = proc.stderr.strip().splitlines()[-1].split()
    m = json.loads((run / "metrics.json").read_text())["fresh"]
    row = {"cells": cells, "patients": patients, "fresh": fresh, "seed": seed, "wall_s": float(wall),
           "peak_gb": int(peak_kb) / 2**20, "load": [load0, os.getloadavg()[0]],
           "baseline": m["baseline"]["hematocrit"]["mse"], "baseline_se": m["baseline"]["hematocrit"]["mse_se"],
           "predictor": m["model"]["hematocrit"]["mse"], "predictor_se": m["model"]["hematocrit"]["mse_se"],
           "vs_baseline": m["paired"]["hematocrit"]["mse"]["diff"], "vs_baseline_se": m["paired"]["hematocrit"]["mse"]["se"],
           "set_model": m["set_model"]["model"]["hematocrit"]["mse"],
           "set_model_vs_baseline": m["set_model"]["paired"]["hematocrit"]["mse"]["diff"],
           "set_model_vs_baseline_se": m["set_model"]["paired"]["hematocrit"]["mse"]["se"],
           "reference": m["reference"]["model"]["hematocrit"]["mse"], "bound": m["bound"]["hematocrit"]["mse"]}
    row.update(_all_cells(run, cells, fresh))
    return row


def _all_cells(run: Path, cells: int, fresh: int) -> dict:
    """The run's predictor reading every cell of each fresh patient, paired against its sets."""
    from flowrbc.evaluation import paired
    from flowrbc.io.builtin import FRESH_SEED, load_default_cohort
    from flowrbc.predictor import Predictor

    cohort = load_default_cohort(fresh, cells, FRESH_SEED)
    y = cohort.samples["hematocrit"].to_numpy(float)
    predictor = Predictor.load(run / "model.pt")
    prep = predictor.prepare_cohort(cohort)
    t0 = time.perf_counter()
    whole = predictor.predict(prep, all_cells=True)[0].value["hematocrit"]
    wall = time.perf_counter() - t0
    sets = predictor.predict(prep)[0].value["hematocrit"]
    d = paired((whole - y) ** 2, (sets - y) ** 2)
    return {"all_cells": float(np.mean((whole - y) ** 2)), "all_cells_vs_sets": d["diff"], "all_cells_vs_sets_se": d["se"],
            "all_cells_predict_s": wall}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["cells"])
    x = [r["cells"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, style in (("baseline", "moments baseline (every cell)", "o-"),
                              ("set_model", "its set model alone (decoder reads the indices)", "v-"),
                              ("predictor", "default predictor (sets of 250)", "s-"),
                              ("all_cells", "default predictor reading every cell", "D--"),
                              ("reference", "exact population parameters", "^:"),
                              ("bound", "bound (infinitely many cells)", "k-")):
        ax.plot(x, [r[key] for r in rows], style, label=label)
    ax.errorbar(x, [r["baseline"] for r in rows], yerr=[2 * r["baseline_se"] for r in rows], fmt="none",
                ecolor="grey", capsize=3)
    ax.set_xscale("log")
    ax.set_xticks(x, [f"{c:,}" for c in x])
    ax.set_xlabel("cells per patient (training and fresh patients)")
    ax.set_ylabel("hematocrit MSE on fresh patients")
    ax.set_title(f"{rows[0]['patients']:,} patients (70 % train), {rows[0]['fresh']:,} fresh, seed {rows[0]['seed']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, nargs="*", default=[])
    ap.add_argument("--patients", type=int, default=2000)
    ap.add_argument("--fresh", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["cells"], r["patients"], r["seed"]) for r in rows}
    for cells in args.cells:
        if (cells, args.patients, args.seed) in done:
            continue
        row = run_point(cells, args.patients, args.fresh, args.seed, args.runs)
        rows.append(row)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
        print(json.dumps(row), flush=True)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
