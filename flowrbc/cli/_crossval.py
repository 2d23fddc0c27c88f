"""``flowrbc train --folds K``: the trainings' progress, then the cross-validated figures — the
predictor against the moments baseline on every patient out of fold, paired ± SE, per fold and
the spread between folds and repeats."""

from __future__ import annotations

from pathlib import Path

from flowrbc.cli._common import console, err_console, progress
from flowrbc.cli._format import number as _fmt

_TAGS = {"better": " ✓", "worse": " ✗", "tie": ""}
_SHOWN = {"regression": (("mse", "MSE"), ("mae", "MAE"), ("r2", "R²"), ("coverage", "coverage")),
          "binary": (("accuracy", "accuracy"), ("auroc", "AUROC"), ("brier", "Brier"), ("ece", "ECE"))}


def train_crossval(cohort, config, out: Path | None, *, folds: int, repeats: int, group: str | None, resume: bool,
                   fresh=None, reference=None) -> None:
    """Run the cross-validation with a progress bar per training and print its figures."""
    from flowrbc.crossval import crossval_cohort
    from flowrbc.train import default_run_dir

    run_dir = out if out is not None else Path(f"{default_run_dir(config)}-cv{folds}")
    err_console.print(f"cross-validation run: {run_dir}", highlight=False)
    with progress() as bar:
        def progress_for(part: str):
            label = "all patients" if part == "all" else (
                f"fold {int(part.split('-f')[1]) + 1}/{folds}" + (f" r{int(part[1:].split('-')[0]) + 1}" if repeats > 1 else ""))
            task = bar.add_task(label, total=config.epochs, status="")

            def report(p) -> None:
                if p.end:
                    bar.update(task, completed=p.epoch, status=f"loss {p.loss:.3f}")
                else:
                    bar.update(task, status=f"step {p.step}/{p.steps} loss {p.loss:.3f}")

            return report

        result = crossval_cohort(cohort, config, run_dir, folds=folds, repeats=repeats, group=group, resume=resume,
                                 fresh=fresh, reference=reference, progress_for=progress_for,
                                 log=lambda m: err_console.print(m, highlight=False))
    print_crossval(result.summary)
    if "fresh" in result.metrics:
        from flowrbc.cli._results import _comparison_table

        fresh_scores = result.metrics["fresh"]
        _comparison_table(fresh_scores, f"the kept model on the fresh cohort (independent): {fresh_scores.get('n', '?')} "
                                        "samples")
    console.print(f"run: {result.run_dir}  (model.pt: trained on every patient; metrics.json with the cross-validated "
                  "figures; oof.csv: each patient's out-of-fold prediction; folds/)", highlight=False)


def print_crossval(cv: dict) -> None:
    """Every patient out of fold, per fold, and the spread between folds and repeats."""
    from rich.table import Table

    from flowrbc.evaluation import verdict

    reps = f" × {cv['repeats']} repeats (repeat 1 shown)" if cv.get("repeats", 1) > 1 else ""
    table = Table(title=f"cross-validated, out of fold: {cv['n']:,} patients, {cv['folds']} folds{reps}")
    for col in ("metric", "model", "baseline", "Δ paired", "folds: Δ mean ± SD"):
        table.add_column(col, justify="left" if col == "metric" else "right", no_wrap=True)
    spread = cv["runs"][0]["between_folds"]
    for name, m in cv["model"].items():
        kind = "binary" if "accuracy" in m else "regression"
        paired = cv["paired"].get(name, {})
        label = "Hct" if name == "hematocrit" else name
        for key, shown in _SHOWN[kind]:
            diff = folds = "-"
            if key in paired:
                d = paired[key]
                diff = f"{d['diff']:+.3f} ± {d['se']:.3f}" + _TAGS[verdict(d, lower_is_better=key != "auroc")]
                s = spread.get(name, {}).get(f"paired_{key}", {})
                folds = _mean_sd(s)
            table.add_row(f"{label} {shown}", _fmt(m.get(key)), _fmt(cv["baseline"].get(name, {}).get(key)), diff, folds)
    console.print(table)
    _per_fold(cv)
    for name, figures in cv.get("between_repeats", {}).items():
        for key, s in figures.items():
            if key.startswith("paired_"):
                values = ", ".join(f"{v:+.3f}" for v in s["values"] if v is not None)
                console.print(f"{name} Δ {key.removeprefix('paired_')} per repeat: {values}; mean {s['mean']:+.3f}, "
                              f"SD {s['sd']:.3f} between repeats", highlight=False)
    walls = cv.get("wall_time_s") or {}
    parts = [w for part, w in walls.items() if part != "all" and w.get("total")]
    if parts and walls.get("all", {}).get("total"):
        console.print(f"wall: {len(parts)} fold trainings {sum(w['total'] for w in parts):.0f} s (their epochs "
                      f"{sum(w['epochs'] for w in parts):.0f} s), the kept model {walls['all']['total']:.0f} s",
                      highlight=False)
    console.print("Δ paired: model − baseline on the same patients, each predicted by the fold that held it out, "
                  "± its SE (paired t; DeLong for AUROC); ✓ model better, ✗ baseline better by more than 2 SE, "
                  "otherwise a tie. Coverage and ECE: of the calibrated interval and probability, out of fold.",
                  highlight=False)


def _mean_sd(s: dict) -> str:
    if not s or s.get("mean") is None:
        return "-"
    return f"{s['mean']:+.3f} ± {s['sd']:.3f}" if s.get("sd") is not None else f"{s['mean']:+.3f}"


def _per_fold(cv: dict) -> None:
    """One row per fold of the first repeat: the headline figure of each target and its Δ."""
    from rich.table import Table

    run = cv["runs"][0]
    heads = [(name, "mse" if "mse" in m else "auroc") for name, m in cv["model"].items()]
    table = Table(title="per fold (repeat 1)")
    table.add_column("fold", justify="left")
    table.add_column("n", justify="right")
    for name, key in heads:
        label = "Hct" if name == "hematocrit" else name
        table.add_column(f"{label} {key.upper()}", justify="right", no_wrap=True)
        table.add_column("Δ ± SE", justify="right", no_wrap=True)
    rows = [(str(f["fold"] + 1), f) for f in run["folds"]]
    for label, scores in rows:
        cells = [label, str(scores["n"])]
        for name, key in heads:
            d = scores["paired"].get(name, {}).get(key)
            cells += [_fmt(scores["model"].get(name, {}).get(key)),
                      "-" if d is None else f"{d['diff']:+.3f} ± {d['se']:.3f}"]
        table.add_row(*cells)
    cells = ["SD", ""]
    for name, key in heads:
        s = run["between_folds"].get(name, {})
        cells += [_fmt(s.get(key, {}).get("sd")), _fmt(s.get(f"paired_{key}", {}).get("sd"))]
    table.add_row(*cells)
    console.print(table)


def print_summary(cv: dict) -> None:
    """The cross-validated figures in a few lines (``flowrbc evaluate``)."""
    from flowrbc.crossval_stats import summary_lines

    for line in summary_lines(cv):
        console.print(line, highlight=False)
