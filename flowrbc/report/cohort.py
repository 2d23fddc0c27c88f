"""The cohort overview: ``index.html`` + ``cohort.png`` with predicted vs true hematocrit, the
anemia calibration, the error by condition and sex, and links to per-patient pages
(``patients/<sample>.html``) drawn from the cohort's own cells.

Predictions are those of ``flowrbc evaluate``: the checkpoint's predictor
(``flowrbc.predictor``) with the same sets, seed and calibration.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from flowrbc.errors import FlowrbcError
from flowrbc.report.page import E, ModelInfo, PatientCase, data_uri, document, fmt

@dataclass
class CohortReport:
    index: Path
    pages: list[Path]
    n: int


def _column(samples, name: str, idx: np.ndarray) -> np.ndarray | None:
    return samples[name].to_numpy()[idx] if name in samples.columns else None


def _values(predictor, prep, cohort, idx: np.ndarray, seed: int) -> list[dict]:
    """Per-sample records in the layout of ``Prediction.to_dict()``, from the predictor."""
    from flowrbc.inputs import DRAWS, sets_per_sample

    raw, _ = predictor.predict(prep, seed=seed)
    calibrated = predictor.calibrated(raw)
    samples = cohort.samples.iloc[idx]
    flags = [c for c in samples.columns if c.startswith("flag_")]
    n_cells = np.diff(prep.offsets_np)
    rows = []
    for j, (sid, s) in enumerate(samples.iterrows()):
        r: dict = {"file": f"{cohort.source}: {sid}"}
        r.update(predictor.record({k: v[j] for k, v in calibrated.items()}, bool(raw.unknown[j])))
        for name in ("sex", "age"):
            if name in samples.columns:
                r[name] = s[name] if name == "sex" else float(s[name])
        r.update(n_events=int(s.get("n_events", n_cells[j])), cells_used=int(n_cells[j]),
                 draws="all" if predictor.set_size is None else int(sets_per_sample(n_cells[j], predictor.set_size, DRAWS)),
                 qc_flags=[c.removeprefix("flag_") for c in flags if bool(s[c])], error=None)
        rows.append(r)
    return rows


def _groups(samples, idx: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """(label, mask) per condition × sex present; by either alone, or all, when one is missing."""
    cond, sex = _column(samples, "condition", idx), _column(samples, "sex", idx)
    keys = [k for k in (cond, sex) if k is not None]
    if not keys:
        return [("all", np.ones(len(idx), bool))]
    labels = np.array([" · ".join(str(k[i]) for k in keys) for i in range(len(idx))])
    order = list(dict.fromkeys(sorted(labels, key=lambda s: (s != "healthy" and not s.startswith("healthy "), s))))
    return [(lab, labels == lab) for lab in order]


def _summary_table(true: np.ndarray, pred: np.ndarray, values: list[dict], groups) -> str:
    low = np.array([np.nan if v.get("hematocrit_low") is None else v["hematocrit_low"] for v in values])
    high = np.array([np.nan if v.get("hematocrit_high") is None else v["hematocrit_high"] for v in values])
    inside = (true >= low) & (true <= high)
    rows = []
    for label, mask in [("all samples", np.ones(len(true), bool)), *groups]:
        e = pred[mask] - true[mask]
        cov = f"{inside[mask].mean():.0%}" if np.isfinite(low[mask]).all() else "–"
        rows.append(f'<tr><td>{E(label)}</td><td class="num">{mask.sum()}</td><td class="num">{e.mean():+.2f}</td>'
                    f'<td class="num">{np.abs(e).mean():.2f}</td><td class="num">{np.sqrt((e ** 2).mean()):.2f}</td>'
                    f'<td class="num">{cov}</td></tr>')
    return ("<table><tr><th>group</th><th class=\"num\">n</th><th class=\"num\">bias (pred − true)</th>"
            "<th class=\"num\">MAE</th><th class=\"num\">RMSE</th><th class=\"num\">interval coverage</th></tr>"
            + "".join(rows) + "</table>")


def _halfwidths(values: list[dict]) -> np.ndarray:
    """Each sample's interval half-width (NaN: no interval)."""
    return np.array([np.nan if v.get("hematocrit_low") is None else (v["hematocrit_high"] - v["hematocrit_low"]) / 2
                     for v in values])


def _width_table(true: np.ndarray, pred: np.ndarray, values: list[dict]) -> str:
    """Coverage and error by decile of the interval's half-width: with per-patient widths
    (``flowrbc.spread``) the error should grow with the width and every decile be covered."""
    half = _halfwidths(values)
    if not len(half) or not np.isfinite(half).all():
        return "<p>No calibrated interval.</p>"
    if np.ptp(half) <= 1e-9 * max(1.0, abs(half[0])):
        return f"<p>Every sample has the same interval, ±{half[0]:.2f} (a model without per-patient widths).</p>"
    decile = np.empty(len(half), np.int64)
    decile[np.argsort(half, kind="stable")] = np.arange(len(half)) * 10 // len(half)
    e = pred - true
    rows = []
    for k in range(10):
        m = decile == k
        if m.any():
            rows.append(f'<tr><td>{k + 1}</td><td class="num">{m.sum()}</td><td class="num">{half[m].min():.2f}–'
                        f'{half[m].max():.2f}</td><td class="num">{np.sqrt((e[m] ** 2).mean()):.2f}</td>'
                        f'<td class="num">{(np.abs(e[m]) <= half[m]).mean():.0%}</td></tr>')
    return ("<table><tr><th>width decile</th><th class=\"num\">n</th><th class=\"num\">half-width</th>"
            "<th class=\"num\">RMSE</th><th class=\"num\">interval coverage</th></tr>" + "".join(rows) + "</table>")


def _sample_table(samples, idx, values: list[dict], links: dict[int, str]) -> str:
    cols = [c for c in ("sex", "age", "condition") if c in samples.columns]
    numeric = ("true Hct", "predicted Hct")
    head = "".join(f'<th{" class=num" if c in numeric else ""}>{c}</th>'
                   for c in ["sample", *cols, *numeric, "anemia (p)", "QC"])
    rows = []
    for j, (sid, s) in enumerate(samples.iloc[idx].iterrows()):
        v = values[j]
        name = f'<a href="{E(links[j])}">{E(str(sid))}</a>' if j in links else E(str(sid))
        true = fmt(float(s["hematocrit"])) if "hematocrit" in samples.columns else "–"
        anemia = (f"{'yes' if v['anemia'] else 'no'} ({v['anemia_probability']:.2f})"
                  if "anemia_probability" in v else "–")
        hct = (f"{fmt(v['hematocrit'])} ({fmt(v.get('hematocrit_low'))}–{fmt(v.get('hematocrit_high'))})"
               if "hematocrit" in v else "–")
        rows.append(f"<tr><td>{name}</td>" + "".join(f"<td>{E(str(s[c]))}</td>" for c in cols)
                    + f'<td class="num">{true}</td><td class="num">{hct}</td><td>{anemia}</td>'
                    f"<td>{E(', '.join(v['qc_flags']) or 'ok')}</td></tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def report_cohort(predictor, cohort, out_dir: str | os.PathLike, *, split: str = "test", seed: int = 0,
                  pages: int | None = None, info: ModelInfo | None = None,
                  on_page: Callable[[Path], None] | None = None) -> CohortReport:
    """Write the overview and the per-patient pages of the first ``pages`` samples (all: None)."""
    from flowrbc.checkpoint import atomic_write_bytes, atomic_write_text
    from flowrbc.crossval import crossval_block
    from flowrbc.crossval_stats import summary_lines
    from flowrbc.evaluate import select_samples
    from flowrbc.metrics import classification_metrics, regression_metrics
    from flowrbc.report.figures import cohort_figure
    from flowrbc.report.files import explained, model_info, write_case

    out = Path(out_dir)
    (out / "patients").mkdir(parents=True, exist_ok=True)
    info = info or model_info(predictor)
    idx = select_samples(cohort, split)
    samples = cohort.samples
    if "hematocrit" not in samples.columns or "hematocrit" not in predictor.targets:
        raise FlowrbcError(f"cohort {cohort.source}: the overview needs a recorded hematocrit and a hematocrit model")
    prep = predictor.prepare_cohort(cohort, idx)
    values = _values(predictor, prep, cohort, idx, seed)
    true = samples["hematocrit"].to_numpy(dtype=np.float64, na_value=np.nan)[idx]
    pred = np.array([v["hematocrit"] for v in values])
    ok = np.isfinite(true)
    anemia = _column(samples, "anemia", idx)
    prob = np.array([v["anemia_probability"] for v in values]) if "anemia_probability" in values[0] else None
    groups = [(lab, m[ok]) for lab, m in _groups(samples, idx)]
    widths = _halfwidths(values)
    half = float(np.median(widths)) if np.isfinite(widths).all() else None  # the figure's band
    has_anemia = anemia is not None and prob is not None
    png = cohort_figure(true[ok], pred[ok], half, anemia.astype(float) if has_anemia else None, prob, groups)
    atomic_write_bytes(out / "cohort.png", png)

    links, written = {}, []
    for j, i in enumerate(idx[: len(idx) if pages is None else pages]):
        sid = str(samples.index[i])
        truth = {k: samples[k].iloc[i] for k in ("hematocrit", "anemia", "condition") if k in samples.columns}
        rbc = float(samples["rbc_count"].iloc[i]) if "rbc_count" in samples.columns else None
        cells = np.asarray(prep.raw[prep.offsets_np[j] : prep.offsets_np[j + 1]], np.float64)
        case = PatientCase(name=sid, source=f"cohort {cohort.source}, sample {sid}" + (
            f", recorded condition {truth['condition']}" if "condition" in truth else ""),
            values=values[j], cells=cells, seed=seed, rbc_count=rbc, truth=truth, back_link="../index.html",
            explanation=explained(predictor, cells, prep.cov_raw[j], seed))
        written.append(write_case(case, info, out / "patients", sid))
        links[j] = f"patients/{sid}.html"
        if on_page is not None:
            on_page(written[-1])

    reg = regression_metrics(true[ok], pred[ok])
    lines = [f"hematocrit: MAE {reg['mae']:.2f}, RMSE {reg['rmse']:.2f}, R² {reg['r2']:.3f} (%)"]
    if has_anemia:
        cm = classification_metrics(anemia.astype(float), prob)
        lines.append(f"anemia: accuracy {cm['accuracy']:.3f}, AUROC {cm['auroc']:.3f}, ECE {cm['ece']:.3f}")
    bound = _column(samples, "bound_hematocrit", idx)
    if bound is not None:  # a synthetic cohort
        cells = int(np.median(np.diff(cohort.offsets)[idx]))
        b = regression_metrics(true[ok], bound.astype(float)[ok])
        lines.append(f"the bound on these samples: hematocrit RMSE {b['rmse']:.2f}, the best prediction from the "
                     f"cell population as infinitely many cells would show it, sex and age; the {cells:,} cells per "
                     "sample here show less, so no predictor of them can be expected to reach it")
    lines += summary_lines(cv) if (cv := crossval_block(predictor, cohort)) else []
    body = (f"<h2>Summary</h2><p>{E(split)} split: {len(idx)} samples, predicted with {E(info.description)} "
            f"({E(info.version)}), seed {seed}. Per-patient pages: {len(written)} of {len(idx)}.</p>"
            + "<ul>" + "".join(f"<li>{E(s)}</li>" for s in lines) + "</ul>"
            + "<h2>Hematocrit predicted vs true, anemia calibration, error by group</h2>"
            + f'<img class="figure" alt="cohort figures" src="{data_uri(png)}">'
            + '<p class="muted">Top left: each dot a sample; grey band: the median of the samples\' calibrated '
              "intervals around the prediction (each sample's own width is in its page and the table below). Top right: samples binned by predicted anemia probability; a calibrated model's dots "
              "lie on the diagonal. Bottom: predicted − true hematocrit per group.</p>"
            + "<h2>Error by condition and sex</h2>" + _summary_table(true[ok], pred[ok], [values[k] for k in
                                                                       np.flatnonzero(ok)], groups)
            + "<h2>Coverage by interval width</h2>" + _width_table(true[ok], pred[ok], [values[k] for k in
                                                                        np.flatnonzero(ok)])
            + "<h2>Samples</h2>" + _sample_table(samples, idx, values, links)
            + "<p class=\"muted\">Predictions: the checkpoint's calibrated outputs averaged over resampled cell "
              "subsets, as <code>flowrbc evaluate</code> computes them; the interval is the checkpoint's conformal "
              "half-width around each prediction, scaled to each sample's expected error where the checkpoint has a "
              "spread model.</p>")
    meta = f"cohort {E(cohort.source)} · model {E(info.path)}"
    index = atomic_write_text(out / "index.html", document("RBC cohort report", "RBC cohort report", meta, body))
    return CohortReport(index=index, pages=written, n=len(idx))
