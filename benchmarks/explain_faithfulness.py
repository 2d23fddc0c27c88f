"""Are ``flowrbc explain``'s attributions faithful? Two tests on fresh synthetic patients.

1. **Deletion.** Remove the top 1 / 5 / 10 / 20 % of a patient's cells by attribution (the
   cells that pushed the target up most), the bottom ones (pushed it down most) and the same
   share at random (``--draws`` draws), predict again on the cells left, and compare the
   change of the prediction (target units: hematocrit %, anemia calibrated log-odds). A
   faithful attribution makes removing the top cells lower the prediction and removing the
   bottom ones raise it, each more than a random removal; the paired SE is over patients,
   the spread of the random removal is the SD of its cohort mean over the draws.
2. **Ground truth.** The generator knows each cell's component (mature, reticulocyte,
   abnormal, donor). For patients of the conditions that have one, the AUROC of each cell's
   attribution for telling that component's cells from the rest (0.5: no separation; below
   0.5: the component's cells are attributed less than the rest).

Variants (``--variants``): ``shapley-R-P`` (R regions, P orderings: the shipped method at
its defaults is shapley-32-4) and ``occlusion-R`` (each region replaced by its reference
stand-ins alone, the change shared by its cells: R + 1 predictions, not additive).

    python benchmarks/explain_faithfulness.py --model runs/latest/model.pt --patients 500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from flowrbc.explain import _values, explain_cells, regions_of
from flowrbc.predictor import Predictor
from flowrbc.synthetic.simulate import COMPONENTS, simulate_cohort

FRACTIONS = (0.01, 0.05, 0.10, 0.20)
GROUND_TRUTH = {"iron_deficiency": ("abnormal",), "hemolysis": ("abnormal", "reticulocyte"),
                "transfusion": ("donor",), "macrocytic": ("abnormal",)}


def occlusion(predictor: Predictor, cells: np.ndarray, cov: np.ndarray, regions: int, seed: int) -> dict:
    """Leave-one-region-out against the same stand-ins as the Shapley method: per cell,
    (f(patient) − f(patient with region r replaced)) / n_r."""
    rng = np.random.default_rng(seed)
    n = len(cells)
    lab, _ = regions_of(predictor.scaler.transform(cells), min(regions, max(1, n // 16)), seed)
    r = lab.max() + 1
    ref = predictor.reference_cells
    stand_in = ref[rng.integers(len(ref), size=n)]
    pops = [cells] + [np.where((lab == j)[:, None], stand_in, cells) for j in range(r)]
    f = _values(predictor, np.concatenate(pops), n, cov, seed)
    counts = np.bincount(lab, minlength=r)
    return {k: (v[0] - v[1:])[lab] / counts[lab] for k, v in f.items()}


def attributions(predictor, cells, cov, variant: str, seed: int) -> dict:
    kind, *args = variant.split("-")
    if kind == "shapley":
        e = explain_cells(predictor, cells, cov, regions=int(args[0]), permutations=int(args[1]), seed=seed)
        return e.attributions
    if kind == "occlusion":
        return occlusion(predictor, cells, cov, int(args[0]), seed)
    raise SystemExit(f"unknown variant {variant!r}")


def covariates(samples, i: int) -> np.ndarray:
    return np.array([1.0 if samples["sex"].iloc[i] == "M" else -1.0, float(samples["age"].iloc[i])])


def predict_kept(predictor, cohort, keep: list[np.ndarray], seed: int) -> dict[str, np.ndarray]:
    """The predictor's outputs (attribution units) for each patient's ``keep`` cells."""
    parts, counts = [], []
    for i, k in enumerate(keep):
        parts.append(cohort.cells[cohort.offsets[i] : cohort.offsets[i + 1]][k])
        counts.append(len(parts[-1]))
    offsets = np.concatenate([[0], np.cumsum(counts)])
    cov = np.stack([covariates(cohort.samples, i) for i in range(len(keep))])
    prep = predictor.prepare(np.concatenate(parts).astype(np.float64), offsets, cov)
    raw, _ = predictor.predict(prep, seed=seed)
    out = {}
    for name, spec in predictor.targets.items():
        v = np.asarray(raw.value[name], dtype=np.float64)
        if spec["kind"] == "binary":
            v = v / float(predictor.calibration_for(name, False).get("temperature", 1.0))
        out[name] = v
    return out


def deletion(predictor, cohort, attr: list[dict], draws: int, seed: int) -> dict:
    n = cohort.n_patients
    sizes = np.diff(cohort.offsets)
    full = predict_kept(predictor, cohort, [np.ones(m, bool) for m in sizes], seed)
    rng = np.random.default_rng(seed + 1)
    out = {}
    for name in predictor.targets:
        rows = {}
        for frac in FRACTIONS:
            deltas = {}
            for mode in ("top", "bottom"):
                keep = []
                for i in range(n):
                    a = attr[i][name]
                    k = max(1, int(round(frac * len(a))))
                    order = np.lexsort((rng.random(len(a)), -a if mode == "top" else a))  # ties broken at random
                    m = np.ones(len(a), bool)
                    m[order[:k]] = False
                    keep.append(m)
                deltas[mode] = predict_kept(predictor, cohort, keep, seed)[name] - full[name]
            rand = []
            for _ in range(draws):
                keep = []
                for i in range(n):
                    m = np.ones(sizes[i], bool)
                    m[rng.choice(sizes[i], max(1, int(round(frac * sizes[i]))), replace=False)] = False
                    keep.append(m)
                rand.append(predict_kept(predictor, cohort, keep, seed)[name] - full[name])
            rand = np.array(rand)  # (draws, n)
            r_mean = rand.mean(0)
            se = lambda d: float(d.std(ddof=1) / np.sqrt(len(d)))  # noqa: E731
            rows[f"{frac:g}"] = {
                "top": float(deltas["top"].mean()), "bottom": float(deltas["bottom"].mean()),
                "random": float(r_mean.mean()), "random_spread": float(rand.mean(1).std(ddof=1)),
                "top_minus_random": float((deltas["top"] - r_mean).mean()), "top_minus_random_se": se(deltas["top"] - r_mean),
                "bottom_minus_random": float((deltas["bottom"] - r_mean).mean()),
                "bottom_minus_random_se": se(deltas["bottom"] - r_mean),
            }
        out[name] = rows
    return out


def auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann–Whitney AUROC with average ranks for ties."""
    order = np.argsort(s, kind="stable")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    pos = y.sum()
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


def ground_truth(predictor, variant: str, patients: int, cells: int, per_condition: int, seed: int) -> dict:
    pool = simulate_cohort(patients, cells, seed=seed, components=True)
    cond = pool.samples["condition"].to_numpy()
    out = {}
    for condition, components in GROUND_TRUTH.items():
        idx = np.flatnonzero(cond == condition)[:per_condition]
        scores = {(c, t): [] for c in components for t in predictor.targets}
        for i in idx:
            x = pool.cells[pool.offsets[i] : pool.offsets[i + 1]].astype(np.float64)
            comp = pool.components[pool.offsets[i] : pool.offsets[i + 1]]
            a = attributions(predictor, x, covariates(pool.samples, i), variant, seed)
            for c in components:
                y = comp == COMPONENTS.index(c)
                if 10 <= y.sum() <= len(y) - 10:
                    for t in predictor.targets:
                        scores[(c, t)].append(auroc(y, a[t]))
        for (c, t), v in scores.items():
            v = np.array(v)
            if len(v):
                out.setdefault(condition, {}).setdefault(c, {})[t] = {
                    "auroc": float(v.mean()), "se": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else None,
                    "patients": int(len(v))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/latest/model.pt")
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2_000_003)  # fresh: neither the training nor the fresh cohort
    ap.add_argument("--variants", default="shapley-32-4,occlusion-32")
    ap.add_argument("--truth-patients", type=int, default=4000, help="pool the ground-truth patients are drawn from")
    ap.add_argument("--per-condition", type=int, default=150)
    ap.add_argument("--out", default="benchmarks/explain_faithfulness.json")
    args = ap.parse_args()
    predictor = Predictor.load(args.model)
    cohort = simulate_cohort(args.patients, args.cells, seed=args.seed)
    result = {"model": str(args.model), "patients": args.patients, "cells": args.cells, "draws": args.draws,
              "seed": args.seed, "variants": {}}
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        attr = [attributions(predictor, cohort.cells[cohort.offsets[i] : cohort.offsets[i + 1]].astype(np.float64),
                             covariates(cohort.samples, i), variant, args.seed) for i in range(cohort.n_patients)]
        wall = time.perf_counter() - t0
        row = {"explain_s_per_patient": wall / cohort.n_patients,
               "deletion": deletion(predictor, cohort, attr, args.draws, args.seed)}
        row["ground_truth"] = ground_truth(predictor, variant, args.truth_patients, args.cells, args.per_condition,
                                           args.seed + 1)
        result["variants"][variant] = row
        print(json.dumps({variant: row}, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
