"""Per-patient hematocrit intervals and anemia calibration of a trained run, on fresh patients
of the built-in generator.

    python3 benchmarks/intervals.py runs/iv-s0                    # 5,000 fresh patients (cached)
    python3 benchmarks/intervals.py runs/iv-s0 --candidates       # + the interval methods compared
    python3 benchmarks/intervals.py runs/iv-s0 --cohort-seed 777  # an experiment cohort instead

Everything is predicted through ``flowrbc.predictor.Predictor`` as ``flowrbc predict`` does.
Prints: coverage and width of the interval overall, by condition (beside one width for all
and the Bayes posterior's 90 % interval, mean ± 1.645 SD), by condition × sex and by decile of
the predicted width; the anemia probability's ECE within bins of MCV, sex and age band (the
Bayes posterior's beside it); the mean anemia probability per condition against the Bayes
posterior and the observed rate. ``--candidates`` also scores the interval methods that were
weighed (all calibrated on the run's validation split) and a feature-aware recalibration of
the anemia probability, on the same patients; this needs the run's training cohort (the
built-in one) and scikit-learn.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", "1")

Z90 = 1.6448536269514722  # the Bayes posterior's 90 % interval: mean ± Z90 · SD
MCV_BINS = ((0, 80, "MCV < 80"), (80, 90, "MCV 80–90"), (90, 100, "MCV 90–100"), (100, 1e9, "MCV ≥ 100"))
AGE_BANDS = ((0, 40, "age < 40"), (40, 65, "age 40–64"), (65, 200, "age ≥ 65"))


def ece(y: np.ndarray, p: np.ndarray) -> float:
    from flowrbc.metrics import expected_calibration_error

    return expected_calibration_error(y, p, bins=10) if len(y) else math.nan


def table(title: str, head: list[str], rows: list[list]) -> None:
    print(f"\n{title}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(" --- " for _ in head) + "|")
    for r in rows:
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")


def deciles(values: np.ndarray) -> np.ndarray:
    """Equal-count deciles 0..9 of ``values`` (ties broken by order)."""
    out = np.empty(len(values), np.int64)
    out[np.argsort(values, kind="stable")] = np.arange(len(values)) * 10 // len(values)
    return out


def intervals(s, err: np.ndarray, half: np.ndarray, one: float) -> None:
    cond, sex = s["condition"].astype(str).to_numpy(), s["sex"].astype(str).to_numpy()
    inside, inside_one = np.abs(err) <= half, np.abs(err) <= one
    bayes_err = s["bound_hematocrit"].to_numpy(float) - s["hematocrit"].to_numpy(float)
    bayes_half = Z90 * s["bound_hematocrit_sd"].to_numpy(float)
    bayes_in = np.abs(bayes_err) <= bayes_half
    print(f"\noverall: coverage {inside.mean():.3f}, mean half-width {half.mean():.2f} (median {np.median(half):.2f}, "
          f"10–90 % {np.percentile(half, 10):.2f}–{np.percentile(half, 90):.2f}); one width for all: coverage "
          f"{inside_one.mean():.3f} at ±{one:.2f}; Bayes posterior: coverage {bayes_in.mean():.3f} at mean "
          f"±{bayes_half.mean():.2f}")
    order = [c for c in ("healthy", "iron_deficiency", "chronic_disease", "transfusion", "beta_thal_trait",
                         "macrocytic", "hemolysis") if c in set(cond)] + sorted(set(cond) - {
        "healthy", "iron_deficiency", "chronic_disease", "transfusion", "beta_thal_trait", "macrocytic", "hemolysis"})
    rows = []
    for c in order:
        m = cond == c
        rows.append([c, int(m.sum()), f"{err[m].mean():+.2f}", f"{np.sqrt(np.mean(err[m] ** 2)):.2f}", inside[m].mean(),
                     f"{half[m].mean():.2f}", inside_one[m].mean(), bayes_in[m].mean(), f"{bayes_half[m].mean():.2f}"])
    table("by condition", ["condition", "n", "bias", "RMSE", "coverage", "mean ±", "one width: coverage",
                           "Bayes 90 %: coverage", "Bayes mean ±"], rows)
    rows = []
    for c in order:
        for x in ("F", "M"):
            m = (cond == c) & (sex == x)
            if m.any():
                rows.append([f"{c} · {x}", int(m.sum()), inside[m].mean(), f"{half[m].mean():.2f}", inside_one[m].mean()])
    table("by condition × sex", ["group", "n", "coverage", "mean ±", "one width: coverage"], rows)
    d = deciles(half)
    rows = []
    for k in range(10):
        m = d == k
        rows.append([k + 1, int(m.sum()), f"{half[m].min():.2f}–{half[m].max():.2f}", f"{np.sqrt(np.mean(err[m] ** 2)):.2f}",
                     inside[m].mean(), inside_one[m].mean(), f"{np.mean(cond[m] == 'chronic_disease'):.0%}"])
    table("by decile of the predicted width", ["decile", "n", "half-width", "RMSE", "coverage", "one width: coverage",
                                               "chronic disease"], rows)


def lab_groups(s, mcv: np.ndarray) -> dict[str, list[tuple[str, np.ndarray]]]:
    """What a lab sees of a patient, binned: MCV, sex, age band -> [(label, mask (n,))]."""
    age, sex = s["age"].to_numpy(float), s["sex"].astype(str).to_numpy()
    return {"MCV": [(label, (mcv >= lo) & (mcv < hi)) for lo, hi, label in MCV_BINS],
            "sex": [(f"sex {x}", sex == x) for x in ("F", "M")],
            "age band": [(label, (age >= lo) & (age < hi)) for lo, hi, label in AGE_BANDS]}


def ece_within(y: np.ndarray, p: np.ndarray, groups: list[tuple[str, np.ndarray]]) -> float:
    """ECE within each group, weighted by the group's size."""
    n = sum(int(m.sum()) for _, m in groups)
    return sum(m.sum() / n * ece(y[m], p[m]) for _, m in groups if m.any())


def anemia(s, prob: np.ndarray, by: dict[str, list[tuple[str, np.ndarray]]]) -> None:
    y = s["anemia"].to_numpy(float)
    bayes = s["bound_anemia_probability"].to_numpy(float)
    groups = [g for kind in by.values() for g in kind]
    rows = [["all", len(y), float(prob.mean()), float(y.mean()), ece(y, prob), ece(y, bayes)]]
    rows += [[label, int(m.sum()), float(prob[m].mean()), float(y[m].mean()), ece(y[m], prob[m]), ece(y[m], bayes[m])]
             for label, m in groups if m.any()]
    table("anemia probability within what a lab sees (ECE: 10 equal-width bins)",
          ["group", "n", "mean p", "observed", "ECE", "Bayes ECE"], rows)
    for name, kind in by.items():
        print(f"ECE within {name} bins (weighted by size): model {ece_within(y, prob, kind):.4f}, "
              f"Bayes posterior {ece_within(y, bayes, kind):.4f}")
    cond = s["condition"].astype(str).to_numpy()
    rows = [[c, int((cond == c).sum()), float(prob[cond == c].mean()), float(bayes[cond == c].mean()),
             float(y[cond == c].mean())] for c in sorted(set(cond))]
    table("mean anemia probability by condition", ["condition", "n", "model", "Bayes posterior", "observed"], rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a run directory (its model.pt) or a model.pt")
    ap.add_argument("--patients", type=int, default=5000)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--cohort-seed", type=int, default=None, help="default: the fresh seed flowrbc train scores")
    ap.add_argument("--seed", type=int, default=0, help="prediction seed (the cell subsets)")
    ap.add_argument("--candidates", action="store_true", help="also compare the interval methods weighed")
    ap.add_argument("--json", type=Path, default=None, help="write the per-patient arrays here")
    args = ap.parse_args()

    import torch

    from flowrbc.checkpoint import resolve_model_path
    from flowrbc.io.builtin import FRESH_SEED, load_default_cohort
    from flowrbc.predictor import Predictor

    torch.set_num_threads(1)
    predictor = Predictor.load(resolve_model_path(args.run))
    seed = FRESH_SEED if args.cohort_seed is None else args.cohort_seed
    t0 = time.perf_counter()
    cohort = load_default_cohort(args.patients, args.cells, seed)
    prep = predictor.prepare_cohort(cohort)
    raw, _ = predictor.predict(prep, seed=args.seed)
    values = predictor.calibrated(raw)
    wall = time.perf_counter() - t0
    s = cohort.samples
    y = s["hematocrit"].to_numpy(float)
    err = values["hematocrit"] - y
    half = values["hematocrit_halfwidth"]
    one = predictor.halfwidth("hematocrit", False)
    cal = predictor.calibration["hematocrit"]
    print(f"{predictor.path}: {cohort.source}; per-patient widths: {'yes' if 'scale' in cal else 'no'}; "
          f"nominal coverage {cal['coverage']:.0%}; cohort read and predicted in {wall:.1f} s")
    intervals(s, err, half, one)
    by = lab_groups(s, prep.moments[:, prep.moment_names.index("volume_mean")])
    anemia(s, values["anemia"], by)
    if args.candidates:
        from intervals_candidates import candidates  # beside this file

        candidates(predictor, prep, raw, s, lambda y, p: (ece(y, p), [ece_within(y, p, g) for g in by.values()]),
                   seed=args.seed)
    if args.json:
        args.json.write_text(json.dumps({"hematocrit": values["hematocrit"].tolist(), "halfwidth": half.tolist(),
                                         "anemia_probability": values["anemia"].tolist(),
                                         "sample_id": [str(i) for i in s.index]}) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
