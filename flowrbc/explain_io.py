"""``flowrbc explain`` on files and cohorts: the attributions of ``flowrbc.explain`` written
where a user reads them.

- A file: ``<stem>.cells.csv``, one row per event of the file in file order: ``event``
  (0-based), the role channels (scaled: fL, pg, ...), ``gated``, ``region`` (-1 outside the
  gate) and ``attribution_<target>`` per target (NaN outside the gate).
- A cohort (.h5ad): a copy with ``obs["attribution_<target>"]`` and ``obs["explain_region"]``,
  and a cohort map (``cohort_map``): the mean attribution of the cells on the volume ×
  hemoglobin-content plane, for the samples predicted anemic and the others.

Every file is written atomically: a failure leaves what was there.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from flowrbc.explain import PERMUTATIONS, REGIONS, Explanation, explain_cells
from flowrbc.predictor import Predictor


@dataclass
class FileExplanation:
    path: str
    sample: Any  # flowrbc.io.sample.GatedSample
    explanation: Explanation


def explain_file(predictor: Predictor, path: str | os.PathLike, *, overrides: dict[str, str] | None = None,
                 scales: dict[str, float] | None = None, covariates: dict[str, Any] | None = None,
                 dataset: int = 0, method: str = "occlusion", regions: int = REGIONS,
                 permutations: int = PERMUTATIONS, seed: int = 0) -> FileExplanation:
    """Read and gate one FCS file as ``flowrbc predict`` does and attribute its prediction
    (``Explanation.prediction`` is the value ``predict`` reports, in attribution units)."""
    from flowrbc.io.sample import load_sample

    sample = load_sample(path, model_channels=predictor.channels, overrides=overrides, scales=scales,
                         trained_ranges=predictor.ranges, dataset=dataset)
    _, cov_raw = predictor.covariates.values(covariates, sample.keywords)
    expl = explain_cells(predictor, sample.cells, cov_raw, method=method, regions=regions, permutations=permutations,
                         seed=seed)
    return FileExplanation(str(path), sample, expl)


def cells_table(result: FileExplanation) -> bytes:
    """The ``<stem>.cells.csv`` of one file (module docstring) as bytes."""
    s, e = result.sample, result.explanation
    n = s.n_events
    gate = np.asarray(s.gate, dtype=bool)
    columns: dict[str, np.ndarray] = {"event": np.arange(n)}
    for j, role in enumerate(s.roles):
        columns[role] = s.events[:, j]
    columns["gated"] = gate.astype(np.int8)
    region = np.full(n, -1, dtype=np.int64)
    region[gate] = e.regions
    columns["region"] = region
    for name, a in e.attributions.items():
        full = np.full(n, np.nan)
        full[gate] = a
        columns[f"attribution_{name}"] = full
    buf = io.StringIO()
    buf.write(",".join(columns) + "\n")
    fmt = ["%d"] + ["%.6g"] * len(s.roles) + ["%d", "%d"] + ["%.6g"] * len(e.attributions)
    block = np.empty((n, len(columns)), dtype=np.float64)
    for j, v in enumerate(columns.values()):
        block[:, j] = v
    np.savetxt(buf, block, fmt=fmt, delimiter=",")
    text = buf.getvalue().replace("nan", "NaN")
    return text.encode()


GAP_FL = 15.0  # regions whose median volumes differ by more are described as separate groups


def region_sentence(e: Explanation, target: str, roles: list[str], cells: np.ndarray, label: str | None = None) -> str:
    """The cells that moved ``target`` most, in words: the fewest regions pushing the way the
    attributions add up to (the larger pushes first) that carry half of that push, split
    into groups of similar volume (``GAP_FL``), the two largest described by their cells'
    volume and cell hemoglobin concentration (10th–90th percentile), share of the cells and
    summed effect."""
    phi = e.region_values[target]
    what = label or target.replace("_", " ")
    sign = 1.0 if phi.sum() >= 0 else -1.0
    same = np.flatnonzero(sign * phi > 0)
    if len(same) == 0:
        return f"no group of cells moved the {what}"
    same = same[np.argsort(-sign * phi[same])]
    take = same[: int(np.searchsorted(np.cumsum(sign * phi[same]), 0.5 * sign * phi[same].sum())) + 1]
    v_role, h_role = roles.index("volume"), roles.index("hemoglobin")
    take = take[np.argsort(e.centres[take, v_role])]
    groups = np.split(take, np.flatnonzero(np.diff(e.centres[take, v_role]) > GAP_FL) + 1)
    groups = sorted(groups, key=lambda g: -abs(phi[g].sum()))[:2]
    binary = e.units.get(target) != "target units"
    units, what = ("", f"{what} log-odds") if binary else (" points", what)
    verb = "raised" if sign > 0 else "lowered"
    parts = []
    for g in groups:
        inside = cells[np.isin(e.regions, g)]
        v = inside[:, v_role]
        chc = 100.0 * inside[:, h_role] / np.maximum(v, 1e-9)  # g/dL
        lo_v, hi_v = np.percentile(v, [10, 90])
        lo_c, hi_c = np.percentile(chc, [10, 90])
        parts.append(f"cells of {lo_v:.0f}–{hi_v:.0f} fL with a cell hemoglobin concentration of {lo_c:.0f}–"
                     f"{hi_c:.0f} g/dL ({100.0 * len(inside) / len(cells):.0f} % of the cells) {verb} the {what} by "
                     f"{abs(phi[g].sum()):.2g}{units}")
    return "; ".join(parts)


def write_bytes(path: Path, data: bytes) -> Path:
    from flowrbc.checkpoint import atomic_write_bytes

    return atomic_write_bytes(path, data)


# ----------------------------------------------------------------------------- cohorts


def explain_cohort(predictor: Predictor, cohort, *, method: str = "occlusion", regions: int = REGIONS,
                   permutations: int = PERMUTATIONS, seed: int = 0, progress=None) -> tuple[dict[str, np.ndarray], np.ndarray, dict[str, np.ndarray]]:
    """Every sample of ``cohort`` -> (target -> (n_cells,) attributions, (n_cells,) regions,
    target -> (n_samples,) the calibrated predictions), in the cohort's cell order.
    ``progress``: called with each finished sample's index."""
    cols = predictor.cohort_columns(cohort)
    cov = predictor.covariates.raw(cohort.samples, missing_unknown=True)  # (n, k)
    attr = {name: np.full(len(cohort.X), np.nan) for name in predictor.targets}
    region = np.full(len(cohort.X), -1, dtype=np.int64)
    prep = predictor.prepare_cohort(cohort)
    raw, _ = predictor.predict(prep, seed=seed)
    predictions = predictor.calibrated(raw)
    for i in range(cohort.n_samples):
        a, b = cohort.offsets[i], cohort.offsets[i + 1]
        if b > a:
            e = explain_cells(predictor, cohort.X[a:b][:, cols], cov[i], method=method, regions=regions,
                              permutations=permutations, seed=seed)
            for name, v in e.attributions.items():
                attr[name][a:b] = v
            region[a:b] = e.regions
        if progress is not None:
            progress(i)
    return attr, region, predictions


MAP_VOLUME = np.linspace(40.0, 160.0, 61)  # fL, 2 fL bins
MAP_HEMOGLOBIN = np.linspace(5.0, 50.0, 46)  # pg, 1 pg bins
MAP_MIN_CELLS = 20  # a bin with fewer cells is left blank


def cohort_map(volume: np.ndarray, hemoglobin: np.ndarray, attribution: np.ndarray, group: np.ndarray,
               titles: tuple[str, str], label: str) -> bytes:
    """PNG: the mean attribution per (volume, hemoglobin) bin, one panel per ``group``
    (False, True), on one symmetric colour scale, with the analyser's micro/macro (fL) and
    hypo/hyper (cell hemoglobin concentration) bounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from flowrbc.report import indices as ix

    means = []
    for g in (False, True):
        at = (group == g) & np.isfinite(attribution)
        total, _, _ = np.histogram2d(volume[at], hemoglobin[at], [MAP_VOLUME, MAP_HEMOGLOBIN], weights=attribution[at])
        count, _, _ = np.histogram2d(volume[at], hemoglobin[at], [MAP_VOLUME, MAP_HEMOGLOBIN])
        with np.errstate(invalid="ignore", divide="ignore"):
            means.append((np.where(count >= MAP_MIN_CELLS, total / count, np.nan), int(at.sum())))
    top = max([np.nanmax(np.abs(m)) for m, _ in means if np.isfinite(m).any()] or [1.0])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True, constrained_layout=True)
    for ax, (m, n), title in zip(axes, means, titles):
        im = ax.pcolormesh(MAP_VOLUME, MAP_HEMOGLOBIN, m.T, cmap="RdBu_r", vmin=-top, vmax=top, shading="flat")
        ax.set_title(f"{title} ({n:,} cells)")
        ax.set_xlabel("cell volume (fL)")
        for x in (ix.MICRO_FL, ix.MACRO_FL):  # the analyser's bounds, as on the patient cytogram
            ax.axvline(x, color="#495057", ls="--", lw=0.9)
        for chc in (ix.HYPO_CHC, ix.HYPER_CHC):
            ax.plot(MAP_VOLUME, MAP_VOLUME * chc / 100.0, color="#495057", ls=":", lw=1.0)
        ax.set_xlim(MAP_VOLUME[0], MAP_VOLUME[-1])
        ax.set_ylim(MAP_HEMOGLOBIN[0], MAP_HEMOGLOBIN[-1])
    axes[0].set_ylabel("cell hemoglobin content (pg)")
    fig.colorbar(im, ax=axes, label=f"mean attribution per cell: {label}")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()
