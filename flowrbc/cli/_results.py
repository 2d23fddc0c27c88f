"""What ``flowrbc train`` prints after a run: the predictor against the moments baseline and the
bound on the test split and the fresh cohort, each difference paired per patient ± its SE."""

from __future__ import annotations

from flowrbc.cli._common import console
from flowrbc.cli._format import number as _fmt


def print_comparison(metrics: dict) -> None:
    """Model vs moment baseline vs bound per target: on the test split and, when there is
    one, on the fresh cohort; model − baseline as a paired difference ± SE."""
    for key, title in (("test", "test split"), ("fresh", "fresh cohort (independent; never used for a choice)")):
        if key in metrics:
            _comparison_table(metrics[key], f"{title}: {metrics[key].get('n', '?')} samples")
            _set_model_line(metrics[key])
            _reference_line(metrics[key])
    scores = metrics.get("fresh", metrics.get("test", {}))
    bound = scores.get("bound", {})
    if bound:
        cells = metrics.get("cells_per_patient")
        base = scores.get("baseline", {}).get("hematocrit", {}).get("mse")
        finite = (f" From the {cells:,} cells per patient of this cohort less is knowable: the moments baseline, "
                  f"which summarises every one of them, scores {base:.3g}." if cells and base is not None else "")
        console.print("* bound: the best prediction from the patient's cell population, as infinitely many cells "
                      "would show it, sex and age — no predictor of the cells can beat it in expectation (synthetic "
                      "cohorts; " + (f"expected hematocrit MSE {bound['hematocrit']['mse']:.3g}; " if "hematocrit"
                                     in bound else "") + "flowrbc.synthetic)." + finite, highlight=False)
    console.print(_legend(metrics), highlight=False)
    console.print("Δ paired: model − baseline, paired per patient, ± its SE; ✓ model better, ✗ baseline "
                  "better by more than 2 SE, otherwise a tie", highlight=False)
    cal = metrics.get("calibration", {})
    test = metrics.get("test", {}).get("model", {})
    if "hematocrit" in cal and "hematocrit" in test:
        c, t = cal["hematocrit"], test["hematocrit"]
        if "scale" in c:  # per-patient widths (flowrbc.spread)
            fresh = metrics.get("fresh", {}).get("model", {}).get("hematocrit")
            also = (f"; fresh coverage {fresh['coverage']:.1%} at mean ±{fresh['interval_halfwidth']:.2f}"
                    if fresh else "")
            console.print(f"hematocrit interval per patient, nominal {c['coverage']:.0%}: test coverage "
                          f"{t['coverage']:.1%} at mean ±{t['interval_halfwidth']:.2f} (one width for all would be "
                          f"±{c['halfwidth']:.2f}){also}", highlight=False)
        else:
            console.print(f"hematocrit interval ±{c['halfwidth']:.2f} for nominal "
                          f"{c['coverage']:.0%}: test coverage {t['coverage']:.1%}")
    if "anemia" in cal and "anemia" in test:
        console.print(f"anemia temperature {cal['anemia']['temperature']:.2f}: test ECE "
                      f"{test['anemia']['ece_uncalibrated']:.3f} -> {test['anemia']['ece']:.3f}")


def _legend(metrics: dict) -> str:
    """What "model" means for the targets this run predicts."""
    from flowrbc.prepare import REGRESSION_TARGETS

    targets = metrics.get("targets", [])
    regression = [t for t in targets if t in REGRESSION_TARGETS]
    binary = [t for t in targets if t not in REGRESSION_TARGETS]
    parts = []
    if regression and metrics.get("predictor") == "hybrid":
        parts.append(f"{' and '.join(regression)} = half the set model, half the mean of two models of the index "
                     "features (analyser indices + distribution shape; flowrbc.hybrid)")
    elif regression:
        parts.append(f"{' and '.join(regression)} = the set model")
    if binary:
        parts.append(f"{' and '.join(binary)} = the set model")
    reads = ", whose decoder reads the index features too" if metrics.get("index_inputs") else ""
    return "model: " + "; ".join(parts) + reads


def _set_model_line(scores: dict) -> None:
    """The set model alone, where the predictor averaged it with the index models."""
    from flowrbc.evaluation import verdict

    alone = scores.get("set_model")
    if not alone:
        return
    parts = []
    for name, m in alone["model"].items():
        d = alone["paired"].get(name, {}).get("mse")
        if "mse" in m and d:
            tag = {"better": " ✓", "worse": " ✗", "tie": ""}[verdict(d, lower_is_better=True)]
            parts.append(f"{'Hct' if name == 'hematocrit' else name} MSE {m['mse']:.3g} "
                         f"(Δ paired {d['diff']:+.3f} ± {d['se']:.3f}{tag})")
    if parts:
        console.print("  set model alone: " + "; ".join(parts), highlight=False)


def _reference_line(scores: dict) -> None:
    """The model given the exact population parameters, and how much of the baseline's gap to
    it the predictor closes (built-in cohort, fresh patients)."""
    from flowrbc.evaluation import verdict

    ref = scores.get("reference", {})
    m, d = ref.get("model", {}).get("hematocrit"), ref.get("paired", {}).get("hematocrit", {}).get("mse")
    base, model = scores["baseline"].get("hematocrit"), scores["model"].get("hematocrit")
    if not (m and d and base and model):
        return
    gap = base["mse"] - m["mse"]
    closed = f"; the model closes {(base['mse'] - model['mse']) / gap:.0%} of the baseline's gap to it" if gap > 0 else ""
    tag = {"better": " ✓", "worse": " ✗", "tie": ""}[verdict(d, lower_is_better=True)]
    console.print(f"  exact population parameters (learned from the same training patients): Hct MSE {m['mse']:.3g} "
                  f"± {m['mse_se']:.2f}; model − it {d['diff']:+.3f} ± {d['se']:.3f}{tag}{closed}", highlight=False)


def _comparison_table(scores: dict, title: str) -> None:
    """One row per metric; fits 80 columns."""
    from rich.table import Table

    from flowrbc.evaluation import verdict

    unknown = scores.get("model_covariates_unknown")
    table = Table(title=title)
    cols = ["metric", "model"] + (["no sex/age"] if unknown else []) + ["baseline", "Δ paired", "bound*"]
    for col in cols:
        table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
    shown = {"regression": (("mse", "MSE"), ("mae", "MAE"), ("r2", "R²"), ("coverage", "coverage")),
             "binary": (("accuracy", "accuracy"), ("auroc", "AUROC"), ("brier", "Brier"), ("ece", "ECE"))}
    bound_key = {"mse": "mse_realized"}
    for name, m in scores["model"].items():
        kind = "binary" if "accuracy" in m else "regression"
        paired = scores.get("paired", {}).get(name, {})
        label = "Hct" if name == "hematocrit" else name
        for key, shown_as in shown[kind]:
            base = scores.get("baseline", {}).get(name, {}).get(key)
            orc = scores.get("bound", {}).get(name, {}).get(bound_key.get(key, key))
            extra = [_fmt(unknown.get(name, {}).get(key))] if unknown else []
            diff = "-"
            if key in paired:
                d = paired[key]
                better = verdict(d, lower_is_better=key != "auroc")
                diff = f"{d['diff']:+.3f} ± {d['se']:.3f}" + {"better": " ✓", "worse": " ✗", "tie": ""}[better]
            table.add_row(f"{label} {shown_as}", _fmt(m.get(key)), *extra, _fmt(base), diff, _fmt(orc))
    console.print(table)
