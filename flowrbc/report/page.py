r"""HTML pages from ``string.Template``: self-contained (styles inline, figures as base64 PNG
``data:`` URIs, gauges as inline SVG), so a page opens from a USB stick with no network.

Every interpolated value is HTML-escaped. A patient page also carries the exact prediction
record (``Prediction.to_dict()``, what ``flowrbc predict --format json`` prints) as JSON in
``<script type="application/json" id="flowrbc-prediction">``.
"""

from __future__ import annotations

import base64
import html
import json
import time
from dataclasses import dataclass, field
from string import Template
from typing import Any

import numpy as np

from flowrbc.report import indices as ix
from flowrbc.report.qc_text import FAILURE, describe

BANNER = "Research use only — not a diagnostic device."

CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0 auto;max-width:1180px;padding:0 18px 30px;
color:#212529;font-size:14px;line-height:1.4}
.banner{background:#c92a2a;color:#fff;font-weight:700;text-align:center;padding:7px;margin:0 -18px 10px;
letter-spacing:.02em}
h1{font-size:21px;margin:8px 0 2px}
h2{font-size:16px;margin:18px 0 6px;border-bottom:1px solid #dee2e6;padding-bottom:3px}
.meta{color:#495057;margin:0}.grid{display:flex;gap:18px;flex-wrap:wrap}.card{flex:1 1 330px;border:1px solid #dee2e6;
border-radius:6px;padding:10px 14px}.big{font-size:26px;font-weight:700}.muted{color:#6c757d;font-size:12.5px}
table{border-collapse:collapse;width:100%}th,td{padding:4px 8px;border-bottom:1px solid #e9ecef;text-align:left;
vertical-align:top}th{background:#f1f3f5;font-weight:600}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.flag-low,.flag-high{color:#c92a2a;font-weight:700}.flag-normal{color:#2b8a3e}.yes{color:#c92a2a}.no{color:#2b8a3e}
.qc{border-left:4px solid #f08c00;background:#fff9db;padding:6px 10px;margin:6px 0}.qc b{display:block}
.ok{border-left:4px solid #2b8a3e;background:#ebfbee;padding:6px 10px}img.figure{width:100%;max-width:1150px;
border:1px solid #dee2e6}ol.sources{font-size:12.5px;color:#495057;padding-left:22px}a{color:#1864ab}
footer{margin-top:18px;color:#6c757d;font-size:12px}
"""

PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title>
<style>$css</style>
</head>
<body>
<div class="banner">$banner</div>
<h1>$heading</h1>
<p class="meta">$meta</p>
$body
<footer>$footer</footer>
</body>
</html>
""")

E = html.escape


@dataclass
class ModelInfo:
    """What a page says about the model: from the checkpoint's metadata."""

    path: str
    description: str  # e.g. "deepsets++, 3 blocks, width 64"
    version: str  # flowrbc version that trained it + checkpoint digest prefix
    cohort: str
    cells: int  # cells per set
    healthy: dict | None  # ``flowrbc.report.reference`` summary, None for older checkpoints
    threshold: float = 0.5  # anemia call: calibrated probability at or above this


@dataclass
class PatientCase:
    """One sample to render: the prediction record and the gated cells it was made from."""

    name: str
    source: str  # file path, or "cohort: sample"
    values: dict[str, Any]  # Prediction.to_dict() layout
    cells: np.ndarray  # (n, 2) [volume fL, hemoglobin pg], gated
    seed: int | None = None
    rbc_count: float | None = None
    truth: dict[str, Any] = field(default_factory=dict)  # cohort pages: recorded values
    back_link: str | None = None
    explanation: dict[str, Any] | None = None  # ``flowrbc.report.files.explained``: the attribution panel's words


class Sources:
    """Numbered references: ``cite(text)`` -> "[n]", the same text the same number."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def cite(self, text: str) -> str:
        if text not in self.items:
            self.items.append(text)
        return f"[{self.items.index(text) + 1}]"

    def html(self) -> str:
        return '<ol class="sources">' + "".join(f"<li>{E(s)}</li>" for s in self.items) + "</ol>"


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def fmt(v: float | None, digits: int = 1) -> str:
    return "–" if v is None or not np.isfinite(v) else f"{v:.{digits}f}"


def document(title: str, heading: str, meta: str, body: str) -> str:
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    import flowrbc

    return PAGE.substitute(title=E(title), css=CSS, banner=E(BANNER), heading=E(heading), meta=meta, body=body,
                           footer=E(f"{BANNER} Generated {stamp} by flowrbc {flowrbc.__version__}."))


# ----------------------------------------------------------------------------- gauges (SVG)


def _x(value: float, lo: float, hi: float, width: float) -> float:
    return 10 + (min(max(value, lo), hi) - lo) / (hi - lo) * (width - 20)


AXIS = 380  # gauge axis length (px); labels go right of it


def hematocrit_gauge(values: dict[str, Any], sex: str | None, lo: float = 20.0, hi: float = 60.0) -> str:
    """Inline SVG: the sex-specific reference range(s) as bands, the prediction as a dot with
    its calibrated interval as a bar, on a 20–60 % axis."""
    w, parts = AXIS, []
    ranges = [(k, ix.sex_interval(ix.HEMATOCRIT, k)) for k in ("M", "F") if sex in (None, k)]
    for row, (k, (a, b)) in enumerate(ranges):
        y = 8 + row * 16
        who = {"M": "men", "F": "women"}[k]
        parts.append(f'<rect x="{_x(a, lo, hi, w):.1f}" y="{y}" width="{_x(b, lo, hi, w) - _x(a, lo, hi, w):.1f}" '
                     f'height="14" fill="#d3f9d8" stroke="#2b8a3e" stroke-width="0.8"/>'
                     f'<text x="{w + 4}" y="{y + 11}" font-size="11" fill="#2b8a3e">'
                     f'{who}: {a:.1f}–{b:.1f} %</text>')
    ymid = 8 + 8 * len(ranges)
    h = values.get("hematocrit")
    low, high = values.get("hematocrit_low"), values.get("hematocrit_high")
    if low is not None and high is not None:
        parts.append(f'<rect x="{_x(low, lo, hi, w):.1f}" y="{ymid - 3}" width="'
                     f'{max(_x(high, lo, hi, w) - _x(low, lo, hi, w), 1):.1f}" height="6" fill="#1c7ed6"/>')
    if h is not None:
        parts.append(f'<circle cx="{_x(h, lo, hi, w):.1f}" cy="{ymid}" r="6" fill="#1864ab" stroke="#fff"/>')
    axis_y = 16 + 16 * len(ranges)
    parts.append(f'<line x1="10" x2="{w - 10}" y1="{axis_y}" y2="{axis_y}" stroke="#495057"/>')
    for t in range(int(lo), int(hi) + 1, 5):
        x = _x(t, lo, hi, w)
        parts.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{axis_y}" y2="{axis_y + 4}" stroke="#495057"/>'
                     f'<text x="{x:.1f}" y="{axis_y + 16}" font-size="10" text-anchor="middle">{t}</text>')
    parts.append(f'<text x="{w + 4}" y="{axis_y + 4}" font-size="10">hematocrit (%)</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w + 130}" height="{axis_y + 22}" role="img" '
            f'aria-label="hematocrit on the reference range">{"".join(parts)}</svg>')


def probability_gauge(p: float, threshold: float) -> str:
    """Inline SVG: a 0–1 bar filled to ``p`` with the decision threshold marked."""
    w = AXIS
    x, t = _x(p, 0, 1, w), _x(threshold, 0, 1, w)
    ticks = "".join(f'<text x="{_x(q, 0, 1, w):.1f}" y="36" font-size="10" text-anchor="middle">{q:g}</text>'
                    for q in (0, 0.25, 0.5, 0.75, 1))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="40" role="img" '
            f'aria-label="anemia probability"><rect x="10" y="6" width="{w - 20}" height="14" fill="#f1f3f5" '
            f'stroke="#adb5bd"/><rect x="10" y="6" width="{x - 10:.1f}" height="14" fill="#f08c00"/>'
            f'<line x1="{t:.1f}" x2="{t:.1f}" y1="2" y2="24" stroke="#212529" stroke-width="1.5"/>{ticks}</svg>')


# ----------------------------------------------------------------------------- patient page


WIDE_NOTE = ("Wide interval: wider than three quarters of the validation patients' intervals. Patients whose "
             "cells look like these differ a lot in hematocrit — a healthy sample and a mild anemia of chronic "
             "disease, for example, can look much alike — so the cells pin this value down less than usual.")


def _width_note(v: dict[str, Any]) -> str:
    """Words for a per-patient interval that is wide (``Predictor.record``'s ``hematocrit_interval_wide``)."""
    return f'<p class="qc"><b>Uncertain hematocrit</b>{E(WIDE_NOTE)}</p>' if v.get("hematocrit_interval_wide") else ""


def _prediction_section(case: PatientCase, model: ModelInfo, sources: Sources) -> str:
    v = case.values
    sex = v.get("sex")
    cards = []
    if "hematocrit" in v:
        cov = v.get("hematocrit_coverage")
        interval = "no calibrated interval"
        if v.get("hematocrit_low") is not None:
            interval = f"{fmt(v['hematocrit_low'])}–{fmt(v.get('hematocrit_high'))} % ({cov:.0%} calibrated interval)"
        truth = (f'<p class="muted">recorded hematocrit: {fmt(case.truth["hematocrit"])} %</p>'
                 if "hematocrit" in case.truth else "")
        ref = sources.cite(f"{ix.LITERATURE_SOURCE}: hematocrit men 43.75 ± 2.99 %, women 38.49 ± 2.21 %; "
                           "reference range mean ± 1.96 SD")
        how = ("split-conformal on the validation split, its width scaled to the error expected for cells "
               "like these" if v.get("hematocrit_interval_wide") is not None else "split-conformal on the validation split")
        cards.append(f'<div class="card"><b>Hematocrit</b><div class="big">{fmt(v["hematocrit"])} %</div>'
                     f'<div>{E(interval)}</div>{_width_note(v)}{hematocrit_gauge(v, sex)}'
                     f'<p class="muted">dot: prediction; blue bar: calibrated interval ({how}); '
                     f'green: healthy reference range {ref}</p>{truth}</div>')
    if "anemia_probability" in v:
        p = v["anemia_probability"]
        call = "yes" if v.get("anemia") else "no"
        who = sources.cite(ix.WHO_SOURCE)
        truth = (f'<p class="muted">recorded anemia: {"yes" if case.truth["anemia"] else "no"}</p>'
                 if "anemia" in case.truth else "")
        cards.append(f'<div class="card"><b>Anemia</b><div class="big"><span class="{call}">{call}</span> '
                     f'<span class="muted">probability {p:.2f}</span></div>{probability_gauge(p, model.threshold)}'
                     f'<p class="muted">calibrated probability (temperature scaling on the validation split); '
                     f'the call is “yes” at {model.threshold:g} or above (black line). Anemia as the model '
                     f'learned it: WHO hemoglobin thresholds {who}.</p>{truth}</div>')
    draws = v.get("draws")
    how = ("every gated cell, in one set" if draws == "all"
           else f"the average over {draws} disjoint random subsets of {model.cells} cells")
    seed = f", seed {case.seed}" if case.seed is not None else ""
    sex_age = f"sex {v.get('sex') or 'unknown'}, age {fmt(v.get('age'), 0) if v.get('age') is not None else 'unknown'}"
    cards.append(f'<div class="card"><b>Model and cells</b><table>'
                 f'<tr><th>model</th><td>{E(model.description)}</td></tr>'
                 f'<tr><th>version</th><td>{E(model.version)}</td></tr>'
                 f'<tr><th>checkpoint</th><td>{E(model.path)}</td></tr>'
                 f'<tr><th>trained on</th><td>{E(model.cohort)}</td></tr>'
                 f'<tr><th>cells used</th><td>{v.get("cells_used")} of {v.get("n_events")} events passed the '
                 f'red-cell gate; the prediction is {E(how)}{E(seed)}</td></tr>'
                 f'<tr><th>patient</th><td>{E(sex_age)}</td></tr></table></div>')
    return '<h2>Prediction</h2><div class="grid">' + "".join(cards) + "</div>"


def _qc_section(case: PatientCase) -> str:
    flags = case.values.get("qc_flags") or []
    if not flags:
        return '<h2>Quality control</h2><div class="ok">No QC flag: the sample passed every check.</div>'
    items = "".join(f'<div class="qc"><b>{E(t)}</b>{E(s)}</div>'
                    for t, s in (describe(f, case.values) for f in flags))
    return f"<h2>Quality control ({len(flags)} flag{'s' if len(flags) > 1 else ''})</h2>{items}"


def _indices_section(case: PatientCase, model: ModelInfo, sources: Sources) -> str:
    values = ix.patient_indices(case.cells)
    sex = case.values.get("sex")
    rows = []
    for name, spec in ix.INDICES.items():
        interval = ix.reference_interval(name, sex, model.healthy)
        flag = ix.flag(values[name], interval)
        ref = (f"{interval.low:.1f}–{interval.high:.1f} {sources.cite(interval.source)}" if interval
               else "no reference")
        rows.append(f'<tr><td>{E(spec.label)}</td><td class="muted">{E(spec.meaning)}</td>'
                    f'<td class="num">{fmt(values[name], 2 if name.startswith("pct") else 1)}'
                    f'</td><td>{E(spec.unit)}</td><td>{ref}</td><td class="flag-{flag}">{flag or "–"}</td></tr>')
    bounds = sources.cite(ix.BOUNDS_SOURCE)
    mentzer = ""
    if case.rbc_count is not None:
        index, favours = ix.mentzer(values["mcv"], case.rbc_count)
        mentzer = (f"<p>Mentzer index MCV / RBC = {values['mcv']:.1f} / {case.rbc_count:g} = <b>{index:.1f}</b>: "
                   f"{E(favours)} (cut-off {ix.MENTZER_CUTOFF:g}; meaningful in a microcytic sample) "
                   f"{sources.cite(ix.MENTZER_SOURCE)}.</p>")
    return ("<h2>Red-cell indices from the cells</h2><table><tr><th>index</th><th>definition</th>"
            "<th class=\"num\">value</th><th>unit</th><th>reference interval</th><th>flag</th></tr>"
            + "".join(rows) + "</table>"
            f'<p class="muted">Computed from the {len(case.cells)} gated cells of this file; CHC = 100 · HC / V '
            f"(g/dL). Micro/macro/hypo/hyper bounds {bounds}.</p>{mentzer}")


def _figure_section(png: bytes, model: ModelInfo, sources: Sources) -> str:
    bounds = sources.cite(ix.BOUNDS_SOURCE)
    if model.healthy is not None:
        h = model.healthy
        healthy = (f"Orange: the healthy region of the model's training cohort — {E(h['selection'])}, "
                   f"{h['n_patients']:,} patients, {h['n_cells']:,} cells — as the smallest areas holding 50 % and "
                   f"90 % of their cells; in the histograms, the grey band spans the 5th–95th percentile of "
                   f"those patients' histograms and the dashed line their median.")
    else:
        healthy = ("No healthy reference is drawn: this model's checkpoint was written before flowrbc stored its "
                   "training cohort's healthy summary. Retrain the model to add the contour and the bands; the "
                   "indices below are flagged against literature intervals only.")
    return (f'<h2>Cytogram and histograms</h2><img class="figure" alt="RBC cytogram and histograms" '
            f'src="{data_uri(png)}"><p class="muted">Dashed lines: volume 60 and 120 fL (micro-, macrocytic); '
            f"dotted lines through the origin: cell hemoglobin concentration 28 and 41 g/dL (hypo-, hyperchromic), "
            f"i.e. HC = 0.28 · V and HC = 0.41 · V {bounds}. {healthy}</p>")


def _explanation_section(case: PatientCase) -> str:
    """What the attribution panel shows, and what its numbers add up to."""
    e = case.explanation
    if not e:
        return ""
    return (f"<h2>Which cells drove the {E(e['target'])} prediction</h2>"
            f"<p><b>{E(e['sentence'][:1].upper() + e['sentence'][1:])}.</b></p>"
            f'<p class="muted">Middle panel: each hexagon coloured by the summed attribution of its cells (red raised '
            f"the prediction, blue lowered it). The cells are grouped into {e['regions']} regions of similar cells; a "
            f"region's value is how much the prediction moves when its cells alone are replaced by cells of healthy "
            f"training patients, shared by its cells, and every cell adds an equal share of what no region explains "
            f"alone ({e['shared']:+.2g} {E(e['units'])} in all). They add up to the prediction "
            f"({e['prediction']:.3g}) minus the prediction for healthy training patients' cells with this patient's "
            f"sex and age ({e['reference']:.3g}), i.e. {e['prediction'] - e['reference']:+.3g} {E(e['units'])}. "
            f"Per-cell values: <code>flowrbc explain</code>.</p>")


def _json_block(values: dict[str, Any]) -> str:
    text = json.dumps(values, indent=1).replace("</", "<\\/")
    return f'<script type="application/json" id="flowrbc-prediction">{text}</script>'


def patient_page(case: PatientCase, model: ModelInfo, figure_png: bytes) -> str:
    """The whole patient page as one HTML string."""
    sources = Sources()
    body = (_prediction_section(case, model, sources) + _qc_section(case) + _figure_section(figure_png, model, sources)
            + _explanation_section(case)
            + _indices_section(case, model, sources) + "<h2>Sources</h2>" + sources.html() + _json_block(case.values))
    back = f' · <a href="{E(case.back_link)}">cohort overview</a>' if case.back_link else ""
    meta = f"{E(case.source)}{back}"
    return document(f"RBC report {case.name}", f"RBC report — {case.name}", meta, body)


def failure_page(name: str, source: str, message: str) -> str:
    """A page for a file that gave no prediction: the reason in plain words."""
    title, text = FAILURE
    body = f'<h2>No result</h2><div class="qc"><b>{E(title)}</b>{E(text.format(message=message))}</div>'
    return document(f"RBC report {name}", f"RBC report — {name}", E(source), body)
