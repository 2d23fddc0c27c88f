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

Variants (``--variants``): ``occlusion-R`` (R regions: the shipped default is occlusion-32) and
``shapley-R-P`` (R regions, P orderings), both ``flowrbc.explain``. Every variant after the
first is compared with it on the same patients: the paired difference of the top- and
bottom-removal changes ± its SE.

    python benchmarks/explain_faithfulness.py --model runs/latest/model.pt --patients 500
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from flowrbc.explain import explain_cells, in_units
from flowrbc.predictor import Predictor
from flowrbc.synthetic.simulate import COMPONENTS, simulate_cohort

FRACTIONS = (0.01, 0.05, 0.10, 0.20)
GROUND_TRUTH = {"iron_deficiency": ("abnormal",), "hemolysis": ("abnormal", "reticulocyte"),
                "transfusion": ("donor",), "macrocytic": ("abnormal",)}


def attributions(predictor, cells, cov, variant: str, seed: int) -> dict:
    """``occlusion-R`` or ``shapley-R-P`` (``flowrbc.explain.explain_cells``)."""
    kind, *args = variant.split("-")
    if kind not in ("occlusion", "shapley"):
        raise SystemExit(f"unknown variant {variant!r}")
    e = explain_cells(predictor, cells, cov, method=kind, regions=int(args[0]),
                      permutations=int(args[1]) if kind == "shapley" else 2, seed=seed)
    return e.attributions


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
    return in_units(predictor, raw)


def deletion(predictor, cohort, attr: list[dict], draws: int, seed: int) -> dict:
    n = cohort.n_patients
    sizes = np.diff(cohort.offsets)
    full = predict_kept(predictor, cohort, [np.ones(m, bool) for m in sizes], seed)
    rng = np.random.default_rng(seed + 1)
    out, per_patient = {}, {name: {} for name in predictor.targets}
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
            per_patient[name][f"{frac:g}"] = {"top": deltas["top"].tolist(), "bottom": deltas["bottom"].tolist()}
            rows[f"{frac:g}"] = {
                "top": float(deltas["top"].mean()), "bottom": float(deltas["bottom"].mean()),
                "random": float(r_mean.mean()), "random_spread": float(rand.mean(1).std(ddof=1)),
                "top_minus_random": float((deltas["top"] - r_mean).mean()), "top_minus_random_se": se(deltas["top"] - r_mean),
                "bottom_minus_random": float((deltas["bottom"] - r_mean).mean()),
                "bottom_minus_random_se": se(deltas["bottom"] - r_mean),
            }
        out[name] = rows
    return out, per_patient


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


def tables(result: dict) -> str:
    """The JSON of a run as RESULTS.md's markdown tables."""
    lines = []
    for variant, row in result["variants"].items():
        lines += [f"**{variant}** ({row['explain_s_per_patient']:.2f} s per patient of {result['cells']:,} cells)", "",
                  "| target | removed | top | bottom | random (spread) | top − random | bottom − random |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for target, rows in row["deletion"].items():
            for frac, r in rows.items():
                lines.append(f"| {target} | {float(frac):.0%} | {r['top']:+.3f} | {r['bottom']:+.3f} | "
                             f"{r['random']:+.3f} ({r['random_spread']:.3f}) | {r['top_minus_random']:+.3f} ± "
                             f"{r['top_minus_random_se']:.3f} | {r['bottom_minus_random']:+.3f} ± "
                             f"{r['bottom_minus_random_se']:.3f} |")
        lines += ["", "| condition | component | patients | AUROC, hematocrit attribution | AUROC, anemia attribution |",
                  "| --- | --- | --- | --- | --- |"]
        for condition, comps in row["ground_truth"].items():
            for comp, d in comps.items():
                cells = [f"{d[t]['auroc']:.3f}" + ("" if d[t]["se"] is None else f" ± {d[t]['se']:.3f}")
                         for t in ("hematocrit", "anemia") if t in d]
                lines.append(f"| {condition} | {comp} | {next(iter(d.values()))['patients']} | " + " | ".join(cells) + " |")
        lines.append("")
    names = list(result["variants"])
    if len(names) > 1 and all("per_patient" in result["variants"][v] for v in names):
        first = result["variants"][names[0]]["per_patient"]
        lines += [f"Paired against {names[0]} on the same patients (other − it, ± SE; negative top / positive "
                  "bottom: the other moves the prediction further):", "",
                  "| variant | target | removed | top | bottom |", "| --- | --- | --- | --- | --- |"]
        for v in names[1:]:
            other = result["variants"][v]["per_patient"]
            for target, fracs in other.items():
                for frac, d in fracs.items():
                    cells = []
                    for mode in ("top", "bottom"):
                        diff = np.array(d[mode]) - np.array(first[target][frac][mode])
                        cells.append(f"{diff.mean():+.3f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.3f}")
                    lines.append(f"| {v} | {target} | {float(frac):.0%} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/latest/model.pt")
    ap.add_argument("--patients", type=int, default=500)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--draws", type=int, default=5)
    ap.add_argument("--seed", type=int, default=2_000_003)  # fresh: neither the training nor the fresh cohort
    ap.add_argument("--variants", default="occlusion-32,shapley-32-4,occlusion-16,occlusion-64")
    ap.add_argument("--truth-patients", type=int, default=4000, help="pool the ground-truth patients are drawn from")
    ap.add_argument("--per-condition", type=int, default=150)
    ap.add_argument("--out", default="benchmarks/explain_faithfulness.json")
    ap.add_argument("--tables", metavar="JSON", help="print the tables of an earlier run's JSON and stop")
    args = ap.parse_args()
    if args.tables:
        print(tables(json.loads(Path(args.tables).read_text())))
        return
    predictor = Predictor.load(args.model)
    cohort = simulate_cohort(args.patients, args.cells, seed=args.seed)
    result = {"model": str(args.model), "patients": args.patients, "cells": args.cells, "draws": args.draws,
              "seed": args.seed, "variants": {}}
    for variant in args.variants.split(","):
        t0 = time.perf_counter()
        attr = [attributions(predictor, cohort.cells[cohort.offsets[i] : cohort.offsets[i + 1]].astype(np.float64),
                             covariates(cohort.samples, i), variant, args.seed) for i in range(cohort.n_patients)]
        wall = time.perf_counter() - t0
        table, per_patient = deletion(predictor, cohort, attr, args.draws, args.seed)
        row = {"explain_s_per_patient": wall / cohort.n_patients, "deletion": table, "per_patient": per_patient}
        row["ground_truth"] = ground_truth(predictor, variant, args.truth_patients, args.cells, args.per_condition,
                                           args.seed + 1)
        result["variants"][variant] = row
        print(json.dumps({variant: {k: v for k, v in row.items() if k != "per_patient"}}, indent=1), flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(tables(result))


if __name__ == "__main__":
    main()
