"""How much each cell is worth: the default predictor and the set model alone on built-in
cohorts of 250 to 10,000 cells per patient, scored on fresh patients with as many cells.

    python3 benchmarks/cells_per_patient.py --patients 5000 --epochs 20 --cells 250 1000 10000 \
        --out benchmarks/cells_per_patient.json --plot docs/cells_study.png

Each point is two ``flowrbc train --cells C --patients P --seed S --fresh F`` runs, each in its
own process (its wall and peak resident memory measured from outside): the default recipe,
and the set model alone (``--set-only --cells-only``: Deep Sets++ reading the cells and sex
and age, nothing else). Both read every cell of a patient (the default ``--read all``). The
cohort has P patients (70 % train) with C cells each, the fresh cohort F patients with C
cells each. Rows per point, all on the same fresh patients: the moments baseline (gradient
boosting on the indices of every cell), the default predictor and its set model, the set
model alone, the exact-population reference (the moments learner given each patient's
population parameters) and the bound (expected MSE; infinitely many cells). Points already in
``--out`` are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

RECIPES = {"default": [], "alone": ["--set-only", "--cells-only"]}  # the predictor; the set model alone
SE_KEYS = {"predictor": "vs_baseline_se", "alone": "alone_vs_baseline_se"}  # paired SE against the baseline


def train_point(cells: int, patients: int, fresh: int, seed: int, epochs: int | None, recipe: str,
                runs: Path) -> tuple[dict, dict]:
    """One ``flowrbc train`` in its own process -> (its fresh metrics, wall and peak RSS)."""
    run = runs / f"cells-{recipe}-p{patients}-c{cells}-s{seed}"
    cmd = ["/usr/bin/time", "-f", "%M %e", sys.executable, "-m", "flowrbc", "train", "--patients", str(patients),
           "--cells", str(cells), "--fresh", str(fresh), "--seed", str(seed), "--out", str(run), *RECIPES[recipe]]
    cmd += ["--epochs", str(epochs)] if epochs else []
    load0 = os.getloadavg()[0]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    peak_kb, wall = proc.stderr.strip().splitlines()[-1].split()
    return (json.loads((run / "metrics.json").read_text())["fresh"],
            {"wall_s": float(wall), "peak_gb": int(peak_kb) / 2**20, "load": [load0, os.getloadavg()[0]]})


def run_point(cells: int, patients: int, fresh: int, seed: int, epochs: int | None, runs: Path) -> dict:
    """Both recipes at one point, scored on the same fresh patients."""
    m, cost = train_point(cells, patients, fresh, seed, epochs, "default", runs)
    a, cost_alone = train_point(cells, patients, fresh, seed, epochs, "alone", runs)
    hct = lambda part: part["hematocrit"]  # noqa: E731
    return {"cells": cells, "patients": patients, "fresh": fresh, "seed": seed, "epochs": epochs,
            "baseline": hct(m["baseline"])["mse"], "baseline_se": hct(m["baseline"])["mse_se"],
            "predictor": hct(m["model"])["mse"], "predictor_se": hct(m["model"])["mse_se"],
            "vs_baseline": hct(m["paired"])["mse"]["diff"], "vs_baseline_se": hct(m["paired"])["mse"]["se"],
            "set_model": hct(m["set_model"]["model"])["mse"],
            "set_model_vs_baseline": hct(m["set_model"]["paired"])["mse"]["diff"],
            "set_model_vs_baseline_se": hct(m["set_model"]["paired"])["mse"]["se"],
            "alone": hct(a["model"])["mse"], "alone_vs_baseline": hct(a["paired"])["mse"]["diff"],
            "alone_vs_baseline_se": hct(a["paired"])["mse"]["se"],
            "reference": hct(m["reference"]["model"])["mse"], "bound": hct(m["bound"])["mse"],
            "default_cost": cost, "alone_cost": cost_alone}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    colours = {"baseline": "tab:grey", "predictor": "tab:blue", "alone": "tab:orange"}
    sizes = sorted({r["patients"] for r in rows})
    for patients, line in zip(sizes, ("--", "-", ":")):
        part = sorted((r for r in rows if r["patients"] == patients), key=lambda r: r["cells"])
        x = [r["cells"] for r in part]
        train = round(0.7 * patients)
        for key, label, marker in (("baseline", "moments baseline (every cell)", "o"),
                                   ("alone", "Deep Sets++ alone (--set-only --cells-only)", "v"),
                                   ("predictor", "default predictor", "s")):
            se = [2 * r[SE_KEYS[key]] for r in part] if key in SE_KEYS else None
            ax.errorbar(x, [r[key] for r in part], yerr=se, fmt=line, marker=marker, color=colours[key], capsize=3,
                        label=f"{label}, {train:,} training patients")
    everything = sorted({r["cells"] for r in rows})
    ax.axhline(rows[0]["reference"], color="tab:green", ls="-.",
               label=f"exact population parameters, {round(0.7 * rows[0]['patients']):,} training patients")
    ax.axhline(rows[0]["bound"], color="k", label="bound (infinitely many cells)")
    ax.set_xscale("log")
    ax.set_xticks(everything, [f"{c:,}" for c in everything])
    ax.set_xlabel("cells per patient (training and fresh patients)")
    ax.set_ylabel("hematocrit MSE on fresh patients")
    ax.set_title(f"{rows[0]['fresh']:,} fresh patients per point, seed {rows[0]['seed']}\n"
                 "error bars: ± 2 SE of the difference from the baseline, paired per patient", fontsize=10)
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
    ap.add_argument("--epochs", type=int, help="epochs of both runs (default: train's)")
    ap.add_argument("--runs", type=Path, default=Path("runs"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    rows = json.loads(args.out.read_text()) if args.out.exists() else []
    done = {(r["cells"], r["patients"], r["seed"]) for r in rows}
    for cells in args.cells:
        if (cells, args.patients, args.seed) in done:
            continue
        row = run_point(cells, args.patients, args.fresh, args.seed, args.epochs, args.runs)
        rows.append(row)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
        print(json.dumps(row), flush=True)
    if args.plot:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
