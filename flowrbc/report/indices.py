r"""Classic red-cell indices from the cells, their reference intervals and flags.

Per sample, from cell volume V (fL) and hemoglobin content HC (pg), with the cell hemoglobin
concentration CHC = 100 · HC / V (g/dL):

* MCV = mean V, MCH = mean HC, MCHC = 100 · MCH / MCV,
* RDW = 100 · SD(V) / MCV (%, RDW-CV), HDW = SD(CHC) (g/dL),
* % micro (V < 60 fL), % macro (V > 120 fL), % hypo (CHC < 28 g/dL), % hyper (CHC > 41 g/dL):
  the fixed bounds of the volume / hemoglobin-concentration cytogram of optical
  (light-scatter) analysers such as the ADVIA 120/2120, whose nine regions they draw
  (defined once, in ``flowrbc.metrics``, whose moment features read the concentration bounds).

Mentzer index = MCV / RBC count (10¹²/L); below 13 favours β-thalassemia trait over iron
deficiency (Mentzer 1973).

numpy only: training computes the healthy intervals with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowrbc.metrics import HYPER_CHC, HYPO_CHC, MACRO_FL, MICRO_FL, segment_fraction, segment_mean_sd

MENTZER_CUTOFF = 13.0
Z95 = 1.96  # mean ± 1.96 SD: the central 95 % of a normal reference population

BOUNDS_SOURCE = ("fixed bounds of the volume / hemoglobin-concentration (V/HC) red-cell cytogram of optical "
                 "light-scatter analysers (ADVIA 120/2120 type), which divide it into nine regions")
MENTZER_SOURCE = "Mentzer WC. Differentiation of iron deficiency from thalassaemia trait. Lancet 1973;1(7808):882"
LITERATURE_SOURCE = "healthy-adult reference values that flowrbc's generator follows (flowrbc/simulate.py)"
WHO_SOURCE = ("WHO. Haemoglobin concentrations for the diagnosis of anaemia and assessment of severity. "
              "WHO/NMH/NHD/MNM/11.1, 2011 (Hb < 13.0 g/dL men, < 12.0 g/dL non-pregnant women)")


@dataclass(frozen=True)
class IndexSpec:
    label: str
    unit: str
    meaning: str


INDICES = {
    "mcv": IndexSpec("MCV", "fL", "mean cell volume"),
    "mch": IndexSpec("MCH", "pg", "mean cell hemoglobin content"),
    "mchc": IndexSpec("MCHC", "g/dL", "mean cell hemoglobin concentration, 100 · MCH / MCV"),
    "rdw": IndexSpec("RDW", "%", "red-cell volume distribution width, 100 · SD(V) / MCV"),
    "hdw": IndexSpec("HDW", "g/dL", "hemoglobin concentration distribution width, SD(CHC)"),
    "pct_micro": IndexSpec("% micro", "%", f"cells with volume < {MICRO_FL:g} fL"),
    "pct_macro": IndexSpec("% macro", "%", f"cells with volume > {MACRO_FL:g} fL"),
    "pct_hypo": IndexSpec("% hypo", "%", f"cells with hemoglobin concentration < {HYPO_CHC:g} g/dL"),
    "pct_hyper": IndexSpec("% hyper", "%", f"cells with hemoglobin concentration > {HYPER_CHC:g} g/dL"),
}
INDEX_NAMES = tuple(INDICES)

# Sex-specific (mean, SD) or sex-independent (low, high) literature intervals.
_BY_SEX = {
    "mcv": {"M": (87.7, 3.3), "F": (86.6, 4.1)},
    "rdw": {"M": (12.8, 0.5), "F": (12.9, 0.6)},
}
_FIXED = {"mch": (27.0, 33.0), "mchc": (32.0, 36.0)}
HEMATOCRIT = {"M": (43.75, 2.99), "F": (38.49, 2.21)}  # healthy adults, %, (mean, SD)


def cell_indices(volume: np.ndarray, hemoglobin: np.ndarray, offsets: np.ndarray) -> dict[str, np.ndarray]:
    """Every index of ``INDICES`` per sample (arrays of length n_samples)."""
    v = np.asarray(volume, dtype=np.float64)
    h = np.asarray(hemoglobin, dtype=np.float64)
    chc = 100.0 * h / np.maximum(v, 1e-6)
    mcv, sd_v = segment_mean_sd(v, offsets)
    mch, _ = segment_mean_sd(h, offsets)
    _, hdw = segment_mean_sd(chc, offsets)
    masks = {"pct_micro": v < MICRO_FL, "pct_macro": v > MACRO_FL, "pct_hypo": chc < HYPO_CHC,
             "pct_hyper": chc > HYPER_CHC}
    out = {"mcv": mcv, "mch": mch, "mchc": 100.0 * mch / mcv, "rdw": 100.0 * sd_v / mcv, "hdw": hdw}
    out.update({name: 100.0 * segment_fraction(mask, offsets) for name, mask in masks.items()})
    return out


def patient_indices(cells: np.ndarray) -> dict[str, float]:
    """Indices of one sample's gated cells (n, 2) [volume, hemoglobin]."""
    return {k: float(v[0]) for k, v in cell_indices(cells[:, 0], cells[:, 1], np.array([0, len(cells)])).items()}


def sex_interval(mean_sd: dict[str, tuple[float, float]], sex: str | None) -> tuple[float, float]:
    """mean ± 1.96 SD for ``sex``; unknown sex: the union of both sexes' intervals."""
    spans = [(m - Z95 * s, m + Z95 * s) for k, (m, s) in mean_sd.items() if sex in (None, k)]
    return min(lo for lo, _ in spans), max(hi for _, hi in spans)


@dataclass(frozen=True)
class Interval:
    low: float
    high: float
    source: str


def reference_interval(name: str, sex: str | None, healthy: dict | None) -> Interval | None:
    """The interval a value is flagged against: the literature's where flowrbc has one, else the
    training cohort's healthy 2.5–97.5 percentiles (``healthy`` = the checkpoint's summary)."""
    who = {"M": "men", "F": "women"}.get(sex or "", "either sex (sex unknown)")
    if name in _BY_SEX:
        return Interval(*sex_interval(_BY_SEX[name], sex), f"{LITERATURE_SOURCE}, {who}, mean ± 1.96 SD")
    if name in _FIXED:
        return Interval(*_FIXED[name], f"{LITERATURE_SOURCE}, adults")
    band = (healthy or {}).get("indices", {}).get(name)
    if band:
        return Interval(band["p2.5"], band["p97.5"], "training cohort, healthy patients, 2.5–97.5th percentile")
    return None


def flag(value: float, interval: Interval | None) -> str:
    """'low', 'high', 'normal', or '' without an interval."""
    if interval is None or not np.isfinite(value):
        return ""
    return "low" if value < interval.low else "high" if value > interval.high else "normal"


def mentzer(mcv: float, rbc_count: float) -> tuple[float, str]:
    """Mentzer index MCV / RBC and what it favours."""
    index = mcv / rbc_count
    return index, ("favours β-thalassemia trait" if index < MENTZER_CUTOFF else "favours iron deficiency")
