r"""Preprocessing: the RBC gate, QC metrics and QC flags.

Array level (numpy only; the predict path uses these): ``rbc_gate``, ``qc_summary``,
``qc_by_sample``, ``qc_flags``. AnnData level, scanpy style (``adata`` first, results under
a documented key, ``adata`` returned when ``copy`` else None): ``gate_rbc``, ``qc_metrics``.

The gate removes events that cannot be red cells; it must keep real macrocytes and
microcytes. Bounds (``GateBounds``, inclusive):

* volume in [20, 250] fL: below 20 fL lie platelets and debris (platelets are 2-20 fL),
  while the smallest red-cell fragments and thalassemic microcytes stay above it; above
  250 fL lie doublets and leukocytes (the largest megaloblastic macrocytes are < 160 fL);
* hemoglobin content in [3, 80] pg (normal 27-33 pg, severe hypochromia ~10 pg,
  macrocytes up to ~55 pg);
* cell hemoglobin concentration ``100 * Hb / V`` in [5, 70] g/dL (normal 28-41; no cell can
  hold hemoglobin denser than it packs, so values far outside are coincidences or noise).

QC metrics use the gated cells: mcv = mean V, mch = mean Hb, rdw = 100 SD(V) / mean V (%),
hdw = SD(100 Hb / V) (g/dL), chdw = SD(Hb) (pg) — the definitions of ``flowrbc.simulate``,
with the population SD of ``metrics.segment_mean_sd``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowrbc.metrics import segment_mean_sd

MIN_CELLS = 200  # fewer gated cells than this: too few for a stable distribution estimate
MAX_GATED_OUT = 0.20  # more than this share of events removed by the gate: suspect sample


@dataclass(frozen=True)
class GateBounds:
    volume: tuple[float, float] = (20.0, 250.0)  # fL
    hemoglobin: tuple[float, float] = (3.0, 80.0)  # pg
    concentration: tuple[float, float] = (5.0, 70.0)  # g/dL, 100 * Hb / V


DEFAULT_BOUNDS = GateBounds()


def rbc_gate(volume: np.ndarray, hemoglobin: np.ndarray, bounds: GateBounds = DEFAULT_BOUNDS) -> np.ndarray:
    """Boolean mask (True = keep) of events that can be red cells; NaN/inf are dropped."""
    v = np.asarray(volume, dtype=np.float64)
    h = np.asarray(hemoglobin, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        chc = 100.0 * h / v
        keep = np.isfinite(v) & np.isfinite(h)
        keep &= (v >= bounds.volume[0]) & (v <= bounds.volume[1])
        keep &= (h >= bounds.hemoglobin[0]) & (h <= bounds.hemoglobin[1])
        keep &= (chc >= bounds.concentration[0]) & (chc <= bounds.concentration[1])
    return keep


def row_owners(offsets: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Sample index of each row in ``lo:hi`` of a matrix indexed by ``offsets`` (int64)."""
    first = int(np.searchsorted(offsets, lo, side="right")) - 1
    last = int(np.searchsorted(offsets, hi - 1, side="right")) - 1 if hi > lo else first
    bounds = np.clip(offsets[first : last + 2], lo, hi)
    return np.repeat(np.arange(first, last + 1, dtype=np.int64), np.diff(bounds))


def qc_by_sample(cells: np.ndarray, offsets: np.ndarray, bounds: GateBounds = DEFAULT_BOUNDS,
                 *, block: int = 1 << 22) -> dict[str, np.ndarray]:
    """Per-sample QC of a cohort matrix ``cells`` (n_cells, 2) [volume, hemoglobin] whose
    sample i owns rows ``offsets[i]:offsets[i+1]``. Vectorised over whole samples, about
    ``block`` rows at a time (bounded memory; a longer sample is taken alone).

    Returns arrays of length n_samples: n_events, n_gated, n_nonfinite, frac_gated,
    mcv, mch, rdw, hdw, chdw (NaN where a sample has no gated cell). The SDs are
    ``metrics.segment_mean_sd``'s, the moment features' own (population SD, ddof 0).
    """
    offsets = np.asarray(offsets, dtype=np.int64)
    n = len(offsets) - 1
    n_gated = np.zeros(n, dtype=np.int64)
    nonfinite = np.zeros(n, dtype=np.int64)
    mean = np.full((n, 3), np.nan)  # V, H, C = 100 H / V of the gated cells
    sd = np.full((n, 3), np.nan)
    for first, last in _sample_runs(offsets, block):
        lo = int(offsets[first])
        x = np.asarray(cells[lo : offsets[last]], dtype=np.float64)  # (b, 2) samples first..last-1
        local = offsets[first : last + 1] - lo  # (m + 1,) their offsets in x
        keep = rbc_gate(x[:, 0], x[:, 1], bounds)  # (b,)
        nonfinite[first:last] = np.diff(_running_count(~np.isfinite(x).all(axis=1))[local])
        gated = _running_count(keep)[local]  # (m + 1,) their offsets among the gated cells
        n_gated[first:last] = np.diff(gated)
        some = np.flatnonzero(np.diff(gated) > 0)  # samples with a gated cell (others are empty runs)
        if not len(some):
            continue
        v, h = x[keep, 0], x[keep, 1]
        segments = np.append(gated[some], gated[-1])
        for j, values in enumerate((v, h, 100.0 * h / v)):
            mean[first + some, j], sd[first + some, j] = segment_mean_sd(values, segments)
    n_events = np.diff(offsets)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "n_events": n_events,
            "n_gated": n_gated,
            "n_nonfinite": nonfinite,
            "frac_gated": np.where(n_events > 0, n_gated / np.maximum(n_events, 1), np.nan),
            "mcv": mean[:, 0],
            "mch": mean[:, 1],
            "rdw": 100 * sd[:, 0] / mean[:, 0],
            "hdw": sd[:, 2],
            "chdw": sd[:, 1],
        }


def _sample_runs(offsets: np.ndarray, rows: int):
    """``(first, last)``: runs of whole samples ``first..last-1`` of at most ``rows`` rows,
    or one sample where it alone holds more."""
    first, n = 0, len(offsets) - 1
    while first < n:
        last = max(int(np.searchsorted(offsets, offsets[first] + rows, side="right")) - 1, first + 1)
        yield first, last
        first = last


def _running_count(mask: np.ndarray) -> np.ndarray:
    """(b,) bool -> (b + 1,) trues before each row: ``c[j] - c[i]`` counts rows i..j-1."""
    return np.concatenate([[0], np.cumsum(mask, dtype=np.int64)])


def qc_flags(qc: dict, min_cells: int = MIN_CELLS) -> dict[str, np.ndarray]:
    """The sample-level QC flags, one definition for the cohort QC and ``flowrbc predict``,
    from the counts n_events, n_gated, n_nonfinite (arrays, or one sample's scalars):
    ``too_few_cells`` (fewer gated cells than ``min_cells``), ``many_gated_out`` (the gate
    removed more than ``MAX_GATED_OUT`` of the events), ``nonfinite_events`` (any NaN/inf event)."""
    n_gated = np.asarray(qc["n_gated"])
    n_events = np.asarray(qc["n_events"])
    return {
        "too_few_cells": n_gated < min_cells,
        "many_gated_out": (n_events - n_gated) > MAX_GATED_OUT * np.maximum(n_events, 1),
        "nonfinite_events": np.asarray(qc["n_nonfinite"]) > 0,
    }


def qc_summary(cells: np.ndarray, bounds: GateBounds = DEFAULT_BOUNDS, min_cells: int = MIN_CELLS) -> dict:
    """QC of one sample's events (n_events, 2) [volume, hemoglobin]: counts, the gated
    share, mcv, mch, rdw, hdw, chdw, and flags; plain Python scalars."""
    cells = np.asarray(cells)
    if cells.ndim != 2 or cells.shape[1] != 2:
        raise ValueError(f"cells: expected shape (n_events, 2) [volume, hemoglobin], got {cells.shape}")
    qc = qc_by_sample(cells, np.array([0, len(cells)]), bounds)
    out = {k: v[0].item() for k, v in qc.items()}
    out.update({k: bool(v[0]) for k, v in qc_flags(qc, min_cells).items()})
    return out


# --------------------------------------------------------------------------- AnnData level


def _role_columns(adata) -> tuple[int, int]:
    """Column indices of volume and hemoglobin: var["role"] when present, else by alias."""
    if "role" in adata.var.columns:
        roles = list(adata.var["role"].astype(str))
        if "volume" in roles and "hemoglobin" in roles:
            return roles.index("volume"), roles.index("hemoglobin")
    from flowrbc.io.channels import resolve_channels

    labels = list(adata.var["marker"]) if "marker" in adata.var.columns else [None] * adata.n_vars
    found = resolve_channels(list(map(str, adata.var_names)), labels)
    return found["volume"], found["hemoglobin"]


def _dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x)


def gate_rbc(adata, *, bounds: GateBounds = DEFAULT_BOUNDS, copy: bool = False):
    """Mark events that can be red cells in ``adata.obs["rbc_gate"]`` (bool).

    Events are not removed: subset with ``adata[adata.obs["rbc_gate"]]``. Returns ``adata``
    (a copy) when ``copy`` else None.
    """
    adata = adata.copy() if copy else adata
    iv, ih = _role_columns(adata)
    x = _dense(adata.X)
    adata.obs["rbc_gate"] = rbc_gate(x[:, iv], x[:, ih], bounds)
    return adata if copy else None


def qc_metrics(adata, *, bounds: GateBounds = DEFAULT_BOUNDS, min_cells: int = MIN_CELLS, copy: bool = False):
    """QC metrics of one sample into ``adata.uns["qc"]`` (dict: counts, indices, flags).

    With ``obs["sample_id"]`` present (a cohort), per-sample metrics go to
    ``adata.uns["qc"]`` as a DataFrame indexed by sample instead.
    """
    adata = adata.copy() if copy else adata
    iv, ih = _role_columns(adata)
    x = _dense(adata.X)[:, [iv, ih]]
    if "sample_id" in adata.obs.columns:
        import pandas as pd

        codes = adata.obs["sample_id"].astype("category")
        order = np.argsort(codes.cat.codes.to_numpy(), kind="stable")
        counts = np.bincount(codes.cat.codes.to_numpy(), minlength=len(codes.cat.categories))
        offsets = np.concatenate([[0], np.cumsum(counts)])
        qc = qc_by_sample(x[order], offsets, bounds)
        qc.update(qc_flags(qc, min_cells))
        adata.uns["qc"] = pd.DataFrame(qc, index=pd.Index(codes.cat.categories.astype(str), name="sample_id"))
    else:
        adata.uns["qc"] = qc_summary(x, bounds, min_cells)
    return adata if copy else None
