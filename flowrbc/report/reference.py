r"""The training cohort's healthy reference, summarised at training time for the report.

``healthy_reference`` runs once per training run and its dict is stored in the checkpoint
under ``healthy_reference`` (plain lists and numbers). It holds, over the *healthy* patients
of the training split (``condition == "healthy"``; else the non-anemic ones; else all):

* ``density`` (n_v, n_h): the pooled cell density on the cytogram grid
  (``volume_edges`` × ``hemoglobin_edges``), each patient weighted equally — the report draws
  its highest-density contours;
* ``volume_band`` / ``hemoglobin_band``: per histogram bin, the 5th, 50th and 95th percentile
  over patients of each patient's density (cells per fL or per pg, as a fraction of its cells);
* ``indices``: the 2.5th, 50th and 97.5th percentile over patients of every classic index
  (``flowrbc.report.indices``).

``healthy_cells`` draws, from the same patients, the cells ``flowrbc explain`` measures a
patient's cells against (stored under ``explain_reference``).

numpy only: training imports it.
"""

from __future__ import annotations

import numpy as np

from flowrbc.report.indices import INDEX_NAMES, cell_indices

VERSION = 1  # of the summary's layout
VOLUME_EDGES = np.linspace(20.0, 200.0, 91)  # fL, 2 fL bins: the cytogram's volume axis
HEMOGLOBIN_EDGES = np.linspace(0.0, 60.0, 61)  # pg, 1 pg bins
MAX_PATIENTS = 2000  # a strided subset of healthy patients beyond this (percentiles, not every one)
BAND = (5, 50, 95)  # histogram band percentiles over patients
INTERVAL = (2.5, 50, 97.5)  # index reference-interval percentiles over patients


def select_healthy(samples, train_idx: np.ndarray) -> tuple[np.ndarray, str]:
    """Training samples that count as healthy, and the words that say how they were chosen."""
    train_idx = np.asarray(train_idx, dtype=np.int64)
    if "condition" in samples.columns:
        cond = samples["condition"].astype(str).to_numpy()[train_idx]
        return train_idx[cond == "healthy"], "training patients whose recorded condition is healthy"
    if "anemia" in samples.columns:
        anemic = samples["anemia"].to_numpy(dtype=np.float64, na_value=np.nan)[train_idx]
        return train_idx[anemic == 0], "non-anemic training patients (the cohort records no condition)"
    return train_idx, "all training patients (the cohort records neither condition nor anemia)"


REFERENCE_CELLS = 20_000  # healthy cells stored for ``flowrbc explain``


def healthy_cells(cells: np.ndarray, offsets: np.ndarray, samples, train_idx: np.ndarray,
                  n: int = REFERENCE_CELLS, seed: int = 0) -> dict | None:
    """``n`` cells of the healthy training patients (``select_healthy``), every patient giving
    the same share, all roles -> {"cells": (n, C) float32, "selection": words}; None when no
    training patient qualifies."""
    idx, how = select_healthy(samples, train_idx)
    offsets = np.asarray(offsets)
    idx = idx[np.diff(offsets)[idx] > 0]
    if len(idx) == 0:
        return None
    rng = np.random.default_rng(seed)
    owner = idx[rng.integers(len(idx), size=n)]  # (n,) a patient per stored cell, equal shares
    counts = np.diff(offsets)[owner]
    rows = offsets[owner] + (rng.random(n) * counts).astype(np.int64)
    return {"cells": np.asarray(cells[rows], dtype=np.float32), "selection": how}


def _binned(values: np.ndarray, owner: np.ndarray, edges: np.ndarray, n_owners: int) -> np.ndarray:
    """Per-owner histogram (n_owners, len(edges) - 1) of ``values``; values outside the edges
    are not counted."""
    nb = len(edges) - 1
    b = np.searchsorted(edges, values, side="right") - 1
    ok = (b >= 0) & (b < nb)
    return np.bincount(owner[ok] * nb + b[ok], minlength=n_owners * nb).reshape(n_owners, nb).astype(np.float64)


def healthy_reference(cells: np.ndarray, offsets: np.ndarray, samples, train_idx: np.ndarray) -> dict | None:
    """The summary above for cohort ``cells`` (n_cells, 2) [volume fL, hemoglobin pg] split by
    ``offsets``; None when no training patient qualifies."""
    idx, how = select_healthy(samples, train_idx)
    idx = idx[np.diff(np.asarray(offsets))[idx] > 0]
    if len(idx) == 0:
        return None
    idx = idx[:: max(1, len(idx) // MAX_PATIENTS)]
    counts = np.diff(offsets)[idx]
    sub_offsets = np.concatenate([[0], np.cumsum(counts)])
    rows = np.repeat(np.asarray(offsets)[idx] - sub_offsets[:-1], counts) + np.arange(sub_offsets[-1])
    v = np.asarray(cells[rows, 0], dtype=np.float64)
    h = np.asarray(cells[rows, 1], dtype=np.float64)
    owner = np.repeat(np.arange(len(idx)), counts)  # (n_rows,) patient of each cell
    weight = 1.0 / counts[owner]  # every patient weighs the same in the pooled density
    density, _, _ = np.histogram2d(v, h, bins=[VOLUME_EDGES, HEMOGLOBIN_EDGES], weights=weight)
    bands = {}
    for name, values, edges in (("volume", v, VOLUME_EDGES), ("hemoglobin", h, HEMOGLOBIN_EDGES)):
        per = _binned(values, owner, edges, len(idx)) / counts[:, None] / np.diff(edges)[None]  # (P, bins)
        bands[f"{name}_band"] = {f"p{q:g}": np.percentile(per, q, axis=0).tolist() for q in BAND}
    values = cell_indices(v, h, sub_offsets)
    indices = {name: {f"p{q:g}": float(np.percentile(values[name], q)) for q in INTERVAL} for name in INDEX_NAMES}
    return {
        "version": VERSION,
        "selection": how,
        "n_patients": int(len(idx)),
        "n_cells": int(len(rows)),
        "volume_edges": VOLUME_EDGES.tolist(),
        "hemoglobin_edges": HEMOGLOBIN_EDGES.tolist(),
        "density": (density / len(idx)).tolist(),
        **bands,
        "indices": indices,
    }
