"""Where set models win: hematocrit MSE and anemia AUROC against training-set size.

For each training size (patients in the train split; the built-in generator, 1,000 cells
per patient, val and test splits of 15 % each), trains Deep Sets++, Set Transformer++ (ISAB
32) and the Slot Set Encoder with flowrbc's default recipe, fits the moments baseline and a
gradient-boosting model given each patient's *exact* population parameters (what infinitely
many cells reveal), and scores all of them on one fresh cohort of another seed (5,000
patients by default) beside the cell bound (``flowrbc.bound``). Every figure carries its SE;
every model − baseline difference is paired on the same fresh patients. The Slot Set Encoder
predicts from all cells of each patient (mini-batch consistent: the same as streaming them).

    python3 benchmarks/scale_study.py --out benchmarks/scale_study.json   # ~1 h on 2 CPU cores
    python3 benchmarks/scale_study.py --plot benchmarks/scale_study.json  # docs/scale_study.png + table

Results are appended point by point, so an interrupted study keeps what it finished, and a
rerun skips the points already in the file.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np

SIZES = (1400, 5000, 14000)
FRESH_SEED = 2_000_003  # the study's own fresh cohort (not the one `flowrbc train` prints)
MODELS = {
    "deepsets++": {},
    "slot_set": {},
    "set_transformer++": {},  # ISAB with 32 inducing points, 4 heads: the papers' model
}


def epochs_for(n_train: int) -> int:
    """The default recipe's 50 epochs at 1,400 patients; beyond, about the same number of
    training sets in all (70,000), at least 10 epochs."""
    return int(min(50, max(10, round(70_000 / n_train))))


def _fresh(n: int, cells: int):
    from flowrbc.io.builtin import load_default_cohort

    return load_default_cohort(n, cells, FRESH_SEED)


def _cohort(n_train: int, cells: int):
    from flowrbc.io.builtin import load_default_cohort

    return load_default_cohort(int(round(n_train / 0.7)), cells, 0)


def _population_model(cohort, fresh) -> dict:
    """GBM on the exact population parameters + sex, age: train split, chosen on val."""
    from flowrbc.synthetic.reference import exact_population_reference

    return exact_population_reference(cohort.samples, 0, fresh.samples, FRESH_SEED)


def _scores(y_h, y_a, hct, prob) -> dict:
    """MSE and AUROC of one predictor on the fresh patients, each with its SE."""
    from flowrbc.evaluation import paired, paired_auroc

    a = paired_auroc(y_a, prob)
    return {"n": len(y_h), "mse": float(np.mean((hct - y_h) ** 2)),
            "mse_se": paired((hct - y_h) ** 2, np.zeros_like(y_h))["se"], "auroc": a["diff"], "auroc_se": a["se"]}


def run_point(n_train: int, family: str, cells: int, fresh, out_dir: Path) -> dict:
    from flowrbc.predictor import Predictor
    from flowrbc.train import TrainConfig, train_cohort

    cohort = _cohort(n_train, cells)
    config = TrainConfig(model=family, epochs=epochs_for(n_train), hybrid=False, index_inputs=False,
                         **MODELS[family])  # set models alone, cells only
    t0, load0 = time.perf_counter(), os.getloadavg()[0]
    res = train_cohort(cohort, config, out_dir / f"{family.replace('+', 'p')}-{n_train}", plots=False, fresh=fresh)
    wall = time.perf_counter() - t0
    m = res.metrics["fresh"]
    row = {"n_train": n_train, "model": family, "epochs": config.epochs, "best_epoch": res.best_epoch,
           "wall_s": wall, "load": [load0, os.getloadavg()[0]],
           "mse": m["model"]["hematocrit"]["mse"], "auroc": m["model"]["anemia"]["auroc"],
           "mse_se": m["model"]["hematocrit"]["mse_se"], "auroc_se": m["model"]["anemia"]["auroc_se"],
           "vs_baseline_mse": m["paired"]["hematocrit"]["mse"]["diff"],
           "vs_baseline_mse_se": m["paired"]["hematocrit"]["mse"]["se"],
           "vs_baseline_auroc": m["paired"]["anemia"]["auroc"]["diff"],
           "vs_baseline_auroc_se": m["paired"]["anemia"]["auroc"]["se"],
           "baseline_mse": m["baseline"]["hematocrit"]["mse"], "baseline_mse_se": m["baseline"]["hematocrit"]["mse_se"],
           "baseline_auroc": m["baseline"]["anemia"]["auroc"], "baseline_auroc_se": m["baseline"]["anemia"]["auroc_se"]}
    if family == "slot_set":  # all cells of each patient at prediction
        predictor = Predictor.load(res.run_dir / "model.pt")
        raw, _ = predictor.predict(predictor.prepare_cohort(fresh), all_cells=True)
        prob = predictor.calibrated(raw)["anemia"]
        row["all_cells"] = _scores(fresh.samples["hematocrit"].to_numpy(float), fresh.samples["anemia"].to_numpy(float),
                                   raw.value["hematocrit"], prob)
    return row


def study(out: Path, sizes, n_fresh: int, cells: int, families) -> None:
    rows = json.loads(out.read_text()) if out.exists() else []
    done = {(r["n_train"], r["model"]) for r in rows}
    fresh = _fresh(n_fresh, cells)
    y_h = fresh.samples["hematocrit"].to_numpy(float)
    y_a = fresh.samples["anemia"].to_numpy(float)
    if ("-", "bound") not in done:
        b_h, b_p = fresh.samples["bound_hematocrit"].to_numpy(float), fresh.samples["bound_anemia_probability"].to_numpy(float)
        rows.append({"n_train": "-", "model": "bound", **_scores(y_h, y_a, b_h, b_p),
                     "mse_expected": float(np.mean(fresh.samples["bound_hematocrit_sd"].to_numpy(float) ** 2))})
        _save(out, rows)
    runs = out.with_suffix("")
    for n in sizes:
        if (n, "exact population") not in done:
            t0 = time.perf_counter()
            p = _population_model(_cohort(n, cells), fresh)
            rows.append({"n_train": n, "model": "exact population", "wall_s": time.perf_counter() - t0,
                         **_scores(y_h, y_a, p["hematocrit"], p["anemia"])})
            _save(out, rows)
        for family in families:
            if (n, family) in done:
                continue
            print(f"training {family} on {n} patients ...", flush=True)
            rows.append(run_point(n, family, cells, fresh, runs))
            _save(out, rows)
            print(json.dumps(rows[-1]), flush=True)


def _save(out: Path, rows) -> None:
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(rows, indent=1) + "\n")
    tmp.replace(out)


def plot(path: Path, figure: Path) -> str:
    """The figure (MSE against training patients, log axis, the bound as a band) and a
    markdown table of every point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = json.loads(path.read_text())
    bound = next(r for r in rows if r["model"] == "bound")
    fig, ax = plt.subplots(figsize=(9, 4.8))
    lo, hi = bound["mse"] - 2 * bound["mse_se"], bound["mse"] + 2 * bound["mse_se"]
    ax.axhspan(lo, hi, color="0.85", label=f"bound (cells → ∞, sex, age): {bound['mse']:.2f} ± 2 SE")
    lines = {"moments baseline": []}
    for r in rows:
        if r["model"] in ("bound",):
            continue
        lines.setdefault(r["model"], []).append((r["n_train"], r["mse"], r.get("mse_se", 0)))
        if "baseline_mse" in r and r["model"] == "deepsets++":
            lines["moments baseline"].append((r["n_train"], r["baseline_mse"], r["baseline_mse_se"]))
        if "all_cells" in r:
            lines.setdefault("slot_set (all cells)", []).append((r["n_train"], r["all_cells"]["mse"], r["all_cells"]["mse_se"]))
    for k, (name, pts) in enumerate(lines.items()):
        if not pts:
            continue
        pts.sort()
        x, y, e = zip(*pts)
        shift = 1 + 0.012 * (k - len(lines) / 2)  # a small offset so that error bars do not overlap
        ax.errorbar([v * shift for v in x], y, yerr=e, marker="o", capsize=3, label=name,
                    linestyle="--" if name in ("moments baseline", "exact population") else "-")
    ax.set_xscale("log")
    sizes = sorted({r["n_train"] for r in rows if isinstance(r["n_train"], int)})
    ax.set_xticks(sizes, [f"{v:,}" for v in sizes])
    ax.minorticks_off()
    ax.set_xlabel("training patients")
    ax.set_ylabel("hematocrit MSE on fresh patients (%²)")
    ax.set_title(f"Learning curves on {bound.get('n', 5000):,} fresh patients (error bars: ± 1 SE, unpaired;\n"
                 "paired model − baseline differences in the table)", fontsize=10)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(figure, dpi=120)
    lines_md = ["| training patients | model | MSE ± SE | model − baseline (paired) | AUROC ± SE | "
                "Δ AUROC vs baseline | epochs | wall | load |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["model"] == "deepsets++" and "baseline_mse" in r:  # the baseline, fitted at the same size
            lines_md.append(f"| {r['n_train']} | moments baseline | {r['baseline_mse']:.2f} ± {r['baseline_mse_se']:.2f} | "
                            f"- | {r['baseline_auroc']:.3f} ± {r['baseline_auroc_se']:.3f} | - | | | |")

        def pm(key, sek, digits=3):
            return f"{r[key]:.{digits}f} ± {r[sek]:.{digits}f}" if key in r and sek in r and r[key] is not None else "-"
        lines_md.append(
            f"| {r['n_train']} | {r['model']} | {pm('mse', 'mse_se', 2)} | {pm('vs_baseline_mse', 'vs_baseline_mse_se', 2)} "
            f"| {pm('auroc', 'auroc_se')} | {pm('vs_baseline_auroc', 'vs_baseline_auroc_se')} | {r.get('epochs', '-')} "
            f"| {_duration(r.get('wall_s'))} | {'/'.join(f'{v:.1f}' for v in r.get('load', [])) or '-'} |")
        if "all_cells" in r:
            a = r["all_cells"]
            lines_md.append(f"| {r['n_train']} | slot_set (all cells) | {a['mse']:.2f} ± {a['mse_se']:.2f} | - "
                            f"| {a['auroc']:.3f} ± {a['auroc_se']:.3f} | - | | | |")
    return "\n".join(lines_md)


def _duration(s) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    return f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/scale_study.json"))
    ap.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    ap.add_argument("--fresh", type=int, default=5000)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--plot", type=Path, help="plot this results file instead of running")
    ap.add_argument("--figure", type=Path, default=Path("docs/scale_study.png"))
    args = ap.parse_args()
    if args.plot:
        print(plot(args.plot, args.figure))
        return
    study(args.out, args.sizes, args.fresh, args.cells, args.models)
    print(plot(args.out, args.figure))


if __name__ == "__main__":
    main()
