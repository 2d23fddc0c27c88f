r"""Report figures as PNG bytes (matplotlib, Agg backend, imported on first use).

The patient figure: the volume × hemoglobin-content cytogram (hexagonal-bin density) with the
cytogram bounds of ``flowrbc.report.indices`` — V = 60 and 120 fL as vertical lines, and
CHC = 28 and 41 g/dL as the lines HC = 0.28 V and HC = 0.41 V through the origin — and the
training cohort's healthy region as highest-density contours (the smallest areas holding 50 %
and 90 % of healthy cells); beside it the volume and hemoglobin histograms over the healthy
5–95 % band; with an explanation (``flowrbc.explain``), a second cytogram coloured by each
cell's attribution, with the same bounds. The cohort figure: predicted vs true hematocrit, the anemia reliability curve,
and the error by condition and sex.
"""

from __future__ import annotations

import io

import numpy as np

from flowrbc.report import indices as ix
from flowrbc.report.reference import HEMOGLOBIN_EDGES, VOLUME_EDGES

HEALTHY = "#d9480f"  # healthy-reference contour and band edge
BAND = "#adb5bd"
PATIENT = "#1c7ed6"
BOUND = "#495057"
MASSES = (0.5, 0.9)  # healthy-region contours: share of healthy cells inside


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig, dpi: int = 110, tight: bool = True) -> bytes:
    """``tight`` crops to the drawn content, at the cost of a second draw (the patient figure
    sets its margins instead: it is drawn once per patient)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight" if tight else None, facecolor="white")
    _pyplot().close(fig)
    return buffer.getvalue()


def hdr_levels(density: np.ndarray, masses=MASSES) -> list[float]:
    """Density thresholds t_m such that the bins with density ≥ t_m hold a share m of the total
    (highest-density regions), ascending for ``contour``."""
    flat = np.sort(density.ravel())[::-1]
    cum = np.cumsum(flat) / flat.sum()
    return sorted(float(flat[min(np.searchsorted(cum, m), len(flat) - 1)]) for m in masses)


def _smooth(d: np.ndarray) -> np.ndarray:
    """3 × 3 box average (edges repeated): contours of a binned density without bin steps."""
    p = np.pad(d, 1, mode="edge")
    return sum(p[i : i + d.shape[0], j : j + d.shape[1]] for i in range(3) for j in range(3)) / 9.0


def _cytogram(ax, cells: np.ndarray, healthy: dict | None) -> None:
    v, h = cells[:, 0], cells[:, 1]
    x0, x1, y0, y1 = VOLUME_EDGES[0], VOLUME_EDGES[-1], HEMOGLOBIN_EDGES[0], HEMOGLOBIN_EDGES[-1]
    hb = ax.hexbin(v, h, gridsize=(56, 30), extent=(x0, x1, y0, y1), mincnt=1, bins="log", cmap="Blues",
                   linewidths=0.1)
    ax.figure.colorbar(hb, ax=ax, pad=0.01, fraction=0.05, label="cells per hexagon")
    _bounds(ax)
    handles = []
    if healthy is not None:
        density = _smooth(np.asarray(healthy["density"]))
        cv = (np.asarray(healthy["volume_edges"])[:-1] + np.asarray(healthy["volume_edges"])[1:]) / 2
        ch = (np.asarray(healthy["hemoglobin_edges"])[:-1] + np.asarray(healthy["hemoglobin_edges"])[1:]) / 2
        ax.contour(cv, ch, density.T, levels=hdr_levels(density), colors=HEALTHY, linewidths=(1.0, 1.8))
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], color=HEALTHY, lw=1.4, label="healthy training cohort\n(50 % and 90 % of cells)"))
    ax.set_title("RBC cytogram: volume × hemoglobin content", fontsize=10)
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=7.5, framealpha=0.9, bbox_to_anchor=(1.0, 0.0))


def _attribution_cytogram(ax, cells: np.ndarray, attribution: np.ndarray, label: str) -> None:
    """The cytogram with each hexagon coloured by its cells' summed attribution (red: raised
    the prediction, blue: lowered it), on a scale symmetric about zero."""
    v, h = cells[:, 0], cells[:, 1]
    x0, x1, y0, y1 = VOLUME_EDGES[0], VOLUME_EDGES[-1], HEMOGLOBIN_EDGES[0], HEMOGLOBIN_EDGES[-1]
    hb = ax.hexbin(v, h, C=attribution, reduce_C_function=np.sum, gridsize=(56, 30), extent=(x0, x1, y0, y1),
                   mincnt=1, cmap="RdBu_r", linewidths=0.1)
    top = float(np.abs(hb.get_array()).max()) if hb.get_array().size else 1.0
    hb.set_clim(-top or -1.0, top or 1.0)
    ax.figure.colorbar(hb, ax=ax, pad=0.01, fraction=0.05, label=f"{label} per hexagon")
    _bounds(ax)
    ax.set_title("which cells moved the prediction", fontsize=10)


def _bounds(ax) -> None:
    """The analyser's micro/macro and hypo/hyper bounds, labelled, and the axes."""
    x0, x1, y0, y1 = VOLUME_EDGES[0], VOLUME_EDGES[-1], HEMOGLOBIN_EDGES[0], HEMOGLOBIN_EDGES[-1]
    for x in (ix.MICRO_FL, ix.MACRO_FL):
        ax.axvline(x, color=BOUND, ls="--", lw=0.9)
    xs = np.array([0.0, x1])
    for chc in (ix.HYPO_CHC, ix.HYPER_CHC):
        ax.plot(xs, xs * chc / 100.0, color=BOUND, ls=":", lw=1.1)
    box = dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.85)
    ax.text((x0 + ix.MICRO_FL) / 2, y1 - 2, f"micro\n< {ix.MICRO_FL:g} fL", ha="center", va="top", fontsize=7.5,
            color=BOUND, bbox=box)
    ax.text((ix.MACRO_FL + x1) / 2, y1 - 2, f"macro\n> {ix.MACRO_FL:g} fL", ha="center", va="top", fontsize=7.5,
            color=BOUND, bbox=box)
    ax.text(185, 0.28 * 185 - 6, f"hypo\nCHC < {ix.HYPO_CHC:g}", ha="center", va="top", fontsize=7.5,
            color=BOUND, bbox=box)
    ax.text(102, 0.41 * 102 + 3.5, f"hyper\nCHC > {ix.HYPER_CHC:g}", ha="right", fontsize=7.5, color=BOUND,
            bbox=box)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_xlabel("cell volume V (fL)")
    ax.set_ylabel("cell hemoglobin content HC (pg)")


def _histogram(ax, values: np.ndarray, edges: np.ndarray, band: dict | None, label: str, unit: str,
               bounds=()) -> None:
    counts, _ = np.histogram(values, bins=edges)
    density = counts / max(len(values), 1) / np.diff(edges)
    if band is not None:
        ax.stairs(band["p95"], edges, baseline=band["p5"], fill=True, color=BAND, alpha=0.55,
                  label="healthy 5–95 %")
        ax.stairs(band["p50"], edges, color=HEALTHY, lw=1.0, ls="--", label="healthy median")
    ax.stairs(density, edges, color=PATIENT, lw=1.5, label="this sample")
    for x in bounds:
        ax.axvline(x, color=BOUND, ls="--", lw=0.9)
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(bottom=0)
    ax.set_xlabel(f"{label} ({unit})")
    ax.set_ylabel(f"share of cells per {unit}")
    ax.legend(fontsize=7, loc="upper right", framealpha=0.9)


def patient_figure(cells: np.ndarray, healthy: dict | None, title: str = "",
                   attribution: tuple[np.ndarray, str] | None = None) -> bytes:
    """The cytogram and both histograms of one sample's gated cells (n, 2) -> PNG bytes;
    ``attribution`` ((n,) per-cell values, their label): the attribution cytogram too."""
    plt = _pyplot()
    extra = attribution is not None
    fig = plt.figure(figsize=(16.5 if extra else 11.0, 4.8))
    ratios = (1.25, 1.25, 1.0) if extra else (1.25, 1.0)
    grid = fig.add_gridspec(2, len(ratios), width_ratios=ratios, hspace=0.55, wspace=0.42 if not extra else 0.3,
                            left=0.045 if extra else 0.065, right=0.985, bottom=0.105, top=0.9)
    _cytogram(fig.add_subplot(grid[:, 0]), cells, healthy)
    if extra:
        _attribution_cytogram(fig.add_subplot(grid[:, 1]), cells, attribution[0], attribution[1])
    bands = healthy or {}
    _histogram(fig.add_subplot(grid[0, -1]), cells[:, 0], VOLUME_EDGES, bands.get("volume_band"),
               "cell volume", "fL", bounds=(ix.MICRO_FL, ix.MACRO_FL))
    _histogram(fig.add_subplot(grid[1, -1]), cells[:, 1], HEMOGLOBIN_EDGES, bands.get("hemoglobin_band"),
               "cell hemoglobin content", "pg")
    if title:
        fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    return png_bytes(fig, tight=False)


def cohort_figure(true: np.ndarray, pred: np.ndarray, halfwidth: float | None, anemia: np.ndarray | None,
                  prob: np.ndarray | None, groups: list[tuple[str, np.ndarray]]) -> bytes:
    """Predicted vs true hematocrit, anemia reliability, and the error (predicted − true) per
    group (``groups``: label and boolean mask over the samples) -> PNG bytes."""
    from flowrbc.metrics import reliability_curve

    plt = _pyplot()
    fig = plt.figure(figsize=(11.0, 8.0))
    grid = fig.add_gridspec(2, 2, height_ratios=(1.0, 0.9), hspace=0.45, wspace=0.25)
    ax = fig.add_subplot(grid[0, 0])
    lo, hi = float(min(true.min(), pred.min())) - 1, float(max(true.max(), pred.max())) + 1
    line = np.array([lo, hi])
    if halfwidth is not None and np.isfinite(halfwidth):
        ax.fill_between(line, line - halfwidth, line + halfwidth, color=BAND, alpha=0.4,
                        label=f"calibrated interval ±{halfwidth:.2f}")
    ax.plot(line, line, color=BOUND, lw=1, label="predicted = true")
    ax.scatter(true, pred, s=9, alpha=0.7, color=PATIENT, edgecolors="none")
    ax.set(xlim=(lo, hi), ylim=(lo, hi), xlabel="true hematocrit (%)", ylabel="predicted hematocrit (%)")
    ax.set_title("hematocrit: predicted vs true", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax = fig.add_subplot(grid[0, 1])
    ax.plot([0, 1], [0, 1], color=BOUND, lw=1, label="perfect calibration")
    if anemia is not None and prob is not None and len(prob):
        curve = reliability_curve(anemia, prob, bins=10)
        ax.plot(curve["predicted"], curve["observed"], marker="o", color=HEALTHY, label="model (10 bins)")
        ax.hist(prob, bins=10, range=(0, 1), weights=np.full(len(prob), 1.0 / len(prob)), color=BAND, alpha=0.5,
                label="share of samples")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted anemia probability", ylabel="observed anemia frequency")
    ax.set_title("anemia: calibration", fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax = fig.add_subplot(grid[1, :])
    err = pred - true
    kept = [(label, err[mask]) for label, mask in groups if mask.any()]
    ax.axhline(0, color=BOUND, lw=1)
    ax.boxplot([e for _, e in kept], showfliers=True, widths=0.6, flierprops=dict(markersize=3))
    ax.set_xticks(np.arange(1, len(kept) + 1), [lbl for lbl, _ in kept], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("predicted − true hematocrit (%)")
    ax.set_title("hematocrit error by condition and sex", fontsize=10)
    return png_bytes(fig)
