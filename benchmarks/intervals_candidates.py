"""The interval methods weighed for per-patient hematocrit widths, and the anemia
recalibrations tried, scored on the same patients (``benchmarks/intervals.py --candidates``).

Every interval is calibrated on the run's validation split (split conformal; normalised by
a spread σ(x) unless said) and scored on the patients given:

- one width: plain split conformal (what checkpoints without a spread model give);
- disagreement: σ = SD of the set model, the MLP ensemble and the trees, + 1;
- in-sample: σ fitted (as ``flowrbc.spread``) on the predictor's own training-split errors;
- shipped: the run's spread model (``flowrbc.spread``: half set model in-sample, half
  out-of-fold trees);
- shipped, γ = 1.25: σ^1.25, the widths' contrast sharpened;
- CQR: 5 % / 95 % quantile trees of the training errors, conformalised (asymmetric);
- one-sided spreads: σ_below(x) and σ_above(x), trees of the shipped training error's positive
  and negative parts, with the score max(e / σ_below, −e / σ_above) (asymmetric, normalised);
- Bayes SD: the generator's posterior SD as σ around this predictor (not available to a
  lab: how far the best possible σ would take this point prediction).
"""

from __future__ import annotations

import math

import numpy as np
import torch

Z90 = 1.6448536269514722
CONDITIONS = ("healthy", "iron_deficiency", "chronic_disease", "transfusion", "beta_thal_trait", "macrocytic",
              "hemolysis")


def members(predictor, prep, idx: np.ndarray) -> np.ndarray:
    """(n, 3): the set model, the MLP ensemble's mean and the trees for samples ``idx``."""
    m = predictor.index.members["hematocrit"]
    F, cov_raw = prep.features[idx], prep.cov_raw[idx]
    Z = torch.from_numpy(predictor.index.mlp_inputs(F, prep.cov.cpu().numpy()[idx]))
    with torch.no_grad():
        mlp = m["mlp"](Z.expand(m["mlp"].config["members"], -1, -1)).mean(0).numpy() * m["y_std"] + m["y_mean"]
    trees = m["trees"].predict_raw(np.concatenate([F, cov_raw], axis=1))
    return np.column_stack([predictor.predict(prep, idx)[0].set_model["hematocrit"], mlp, trees])


def rank_quantile(scores: np.ndarray, coverage: float = 0.9) -> float:
    s = np.sort(scores[np.isfinite(scores)])
    k = math.ceil((len(s) + 1) * coverage)
    return math.inf if k > len(s) else float(s[k - 1])


def candidates(predictor, prep, raw, samples, calibration_errors, seed: int = 0) -> None:
    """The interval and recalibration candidates on the fresh patients ``samples``;
    ``calibration_errors(y, p)`` -> (ECE, [ECE within each group a lab sees])."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression

    from flowrbc.calibration import calibrated_probability, fit_temperature
    from flowrbc.io.builtin import load_default_cohort
    from flowrbc.spread import SPREAD_PARAMS, fit_spread, proxy_predictions, spread_inputs, training_error

    train_cohort = load_default_cohort()
    if predictor.meta.get("cohort") != train_cohort.source:
        print(f"\n--candidates: needs the run's training cohort; {predictor.meta.get('cohort')} is not the built-in one")
        return
    tprep = predictor.prepare_cohort(train_cohort, features=True)
    split = train_cohort.samples["split"].astype(str).to_numpy()
    tr, va = np.flatnonzero(split == "train"), np.flatnonzero(split == "val")
    y_all = train_cohort.samples["hematocrit"].to_numpy(float)
    traw, _ = predictor.predict(tprep, tr, seed=seed)
    vraw, _ = predictor.predict(tprep, va, seed=seed)
    r_tr, r_va = traw.value["hematocrit"] - y_all[tr], vraw.value["hematocrit"] - y_all[va]
    X_tr = spread_inputs(tprep.features[tr], tprep.cov_raw[tr], traw.value)
    X_va = spread_inputs(tprep.features[va], tprep.cov_raw[va], vraw.value)
    X_ev = spread_inputs(prep.features, prep.cov_raw, raw.value)
    y = samples["hematocrit"].to_numpy(float)
    err = raw.value["hematocrit"] - y
    cond = samples["condition"].astype(str).to_numpy()

    def normalised(s_va: np.ndarray, s_ev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        q = rank_quantile(np.abs(r_va) / s_va)
        return -q * s_ev, q * s_ev  # the interval of the error pred − y

    out = {"one width": (np.full(len(y), -predictor.halfwidth("hematocrit", False)),
                         np.full(len(y), predictor.halfwidth("hematocrit", False)))}
    out["disagreement"] = normalised(members(predictor, tprep, va).std(1) + 1.0,
                                     members(predictor, prep, np.arange(prep.n)).std(1) + 1.0)
    insample = fit_spread(X_tr, r_tr, [str(i) for i in range(X_tr.shape[1])])
    out["in-sample"] = normalised(insample.predict(X_va), insample.predict(X_ev))
    shipped = predictor.spread["hematocrit"]
    out["shipped"] = normalised(shipped.predict(X_va), raw.spread["hematocrit"])
    out["shipped, γ = 1.25"] = normalised(shipped.predict(X_va) ** 1.25, raw.spread["hematocrit"] ** 1.25)
    lo, hi = (HistGradientBoostingRegressor(loss="quantile", quantile=a, early_stopping=False, random_state=0,
                                            **SPREAD_PARAMS).fit(X_tr, r_tr) for a in (0.05, 0.95))
    q = rank_quantile(np.maximum(lo.predict(X_va) - r_va, r_va - hi.predict(X_va)))
    out["CQR"] = (lo.predict(X_ev) - q, hi.predict(X_ev) + q)
    proxy = proxy_predictions(tprep.features, tprep.cov_raw, {"hematocrit": y_all},
                              {"hematocrit": predictor.targets["hematocrit"]}, tr, seed)["hematocrit"]
    e_tr = training_error(traw.set_model["hematocrit"], proxy, y_all[tr])  # pred − y, as the shipped spread learns
    names = [str(i) for i in range(X_tr.shape[1])]
    below, above = fit_spread(X_tr, np.maximum(e_tr, 0.0), names), fit_spread(X_tr, np.maximum(-e_tr, 0.0), names)
    q = rank_quantile(np.maximum(r_va / below.predict(X_va), -r_va / above.predict(X_va)))
    out["one-sided spreads"] = (-q * above.predict(X_ev), q * below.predict(X_ev))
    bayes_va = train_cohort.samples["bound_hematocrit_sd"].to_numpy(float)[va]
    out["Bayes SD (not a lab's)"] = normalised(bayes_va, samples["bound_hematocrit_sd"].to_numpy(float))

    big = [c for c in CONDITIONS if (cond == c).sum() >= 150]
    print("\n### Interval methods (calibrated on the run's validation split; coverage on these patients)\n")
    print("| method | coverage | mean ± | min over conditions ≥ 150 | " + " | ".join(c.replace("_", " ") for c in big) + " |")
    print("|" + " --- |" * (4 + len(big)))
    for name, (low, high) in out.items():
        inside = (err >= low) & (err <= high)
        per = [inside[cond == c].mean() for c in big]
        print(f"| {name} | {inside.mean():.3f} | {np.mean((high - low) / 2):.2f} | {min(per):.3f} | "
              + " | ".join(f"{v:.3f}" for v in per) + " |")

    # anemia: the shipped temperature against two recalibrations that read what a lab sees
    ya = train_cohort.samples["anemia"].to_numpy(float)
    ye = samples["anemia"].to_numpy(float)
    mcv_name = tprep.moment_names.index("volume_mean")

    def lab(rw, pr, idx):
        return np.column_stack([rw.value["anemia"], pr.cov_raw[idx], rw.value["hematocrit"], pr.moments[idx, mcv_name]])

    probs = {"temperature (shipped)": predictor.calibrated(raw)["anemia"]}
    platt = LogisticRegression(C=1.0, max_iter=2000).fit(lab(vraw, tprep, va), ya[va])
    probs["logistic on logit, sex, age, Hct, MCV (val)"] = platt.predict_proba(lab(raw, prep, np.arange(prep.n)))[:, 1]
    T = np.concatenate([tprep.features, tprep.cov_raw], axis=1)
    trees = HistGradientBoostingClassifier(early_stopping=False, random_state=0, learning_rate=0.05, max_iter=200,
                                           max_leaf_nodes=15, min_samples_leaf=20).fit(T[tr], ya[tr])
    z_va = 0.5 * vraw.value["anemia"] + 0.5 * trees.decision_function(T[va])
    z_ev = 0.5 * raw.value["anemia"] + 0.5 * trees.decision_function(np.concatenate([prep.features, prep.cov_raw], 1))
    probs["half set model, half trees on the indices"] = calibrated_probability(z_ev, fit_temperature(z_va, ya[va]))
    bayes = samples["bound_anemia_probability"].to_numpy(float)
    chronic = cond == "chronic_disease"
    print("\n### Anemia recalibrations (fitted on the run's training/validation splits)\n")
    print("| probability | ECE | ECE within MCV | within sex | within age band | chronic disease mean p |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, p in list(probs.items()) + [("Bayes posterior (not a lab's)", bayes)]:
        overall, within = calibration_errors(ye, p)
        print(f"| {name} | {overall:.4f} | " + " | ".join(f"{w:.4f}" for w in within)
              + f" | {p[chronic].mean():.3f} |")
    print(f"\nchronic disease: observed anemia {ye[chronic].mean():.3f}")
