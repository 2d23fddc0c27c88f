"""A checkpoint applied to a whole cohort: metrics on a split (``evaluate_cohort``) and
patient-level embeddings as AnnData with neighbors and UMAP (``embed_cohort``)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowrbc.errors import FlowrbcError

SPLITS = ("train", "val", "test", "all")


def _cohort_on_device(loaded, cohort):
    """Scale the cohort's model channels with the checkpoint's scaler; channels by name."""
    from flowrbc.errors import ChannelError

    missing = [f"{r} ({c!r})" for r, c in loaded.channels if c not in cohort.channels]
    if missing:
        raise ChannelError(f"cohort {cohort.source}: lacks the model's channels {', '.join(missing)}")
    cols = [cohort.channels.index(c) for _, c in loaded.channels]
    X = torch.from_numpy(loaded.scaler.transform(cohort.X[:, cols])).to(loaded.device)
    offsets = torch.from_numpy(np.ascontiguousarray(cohort.offsets)).to(loaded.device)
    return X, offsets


def _select(cohort, split: str) -> np.ndarray:
    if split not in SPLITS:
        raise FlowrbcError(f"--split {split!r}: choose from {', '.join(SPLITS)}")
    usable = np.diff(cohort.offsets) > 0
    if split == "all":
        return np.flatnonzero(usable)
    if "split" not in cohort.samples.columns:
        raise FlowrbcError(f"cohort {cohort.source}: no 'split' column; use --split all")
    idx = np.flatnonzero((cohort.samples["split"].astype(str).to_numpy() == split) & usable)
    if len(idx) == 0:
        raise FlowrbcError(f"cohort {cohort.source}: the {split} split is empty")
    return idx


def predictions(loaded, cohort, idx: np.ndarray, seed: int = 0) -> dict[str, np.ndarray]:
    """Calibrated predictions (target units / probabilities) for samples ``idx``."""
    from flowrbc.calibration import calibrated_probability
    from flowrbc.predict import DRAWS, predict_sets

    X, offsets = _cohort_on_device(loaded, cohort)
    cov, unknown = _covariates(loaded, cohort, idx)
    F = _index_features(loaded, cohort, idx)
    inputs = loaded.decoder_inputs(None if cov is None else torch.from_numpy(np.asarray(cov, dtype=np.float32)), F)
    raw = predict_sets(loaded.model, X, offsets, idx, loaded.targets, cells=loaded.cells, draws=DRAWS, seed=seed,
                       covariates=inputs)
    if loaded.index is not None and not unknown:
        raw = _blend(loaded, cohort, idx, raw, cov, F)
    out = {}
    for name, spec in loaded.targets.items():
        if spec["kind"] == "binary":
            cal = loaded.calibration.get(name, {})
            t = float((cal.get("covariates_unknown", cal) if unknown else cal).get("temperature", 1.0))
            out[name] = calibrated_probability(raw[name], t)
        else:
            out[name] = raw[name]
    return out


def _index_features(loaded, cohort, idx: np.ndarray) -> np.ndarray | None:
    """``loaded.index_features`` of samples ``idx`` -> (len(idx), F), or None."""
    if loaded.index is None and loaded.index_inputs is None:
        return None
    from flowrbc.train import rows_of

    cols = [cohort.channels.index(c) for _, c in loaded.channels]
    rows, offs = rows_of(cohort.offsets, idx)
    cells = cohort.X[rows][:, cols]
    return loaded.index_features(cells[:, 0], cells[:, 1], offs)


def _blend(loaded, cohort, idx: np.ndarray, raw: dict, cov: np.ndarray | None, F: np.ndarray) -> dict:
    """The set model's predictions averaged with the checkpoint's index members (``flowrbc.hybrid``)
    reading ``F`` (``_index_features``)."""
    enc = loaded.covariates
    has = enc is not None and bool(enc.names)
    cov_raw = enc.raw(cohort.samples.iloc[idx]) if has else np.zeros((len(idx), 0))
    encoded = np.asarray(cov) if cov is not None else np.zeros((len(idx), 0))
    return loaded.index.blend(raw, F, cov_raw, encoded)


def _covariates(loaded, cohort, idx: np.ndarray):
    """The model's covariates for samples ``idx`` -> (encoded (len(idx), k) or None, whether a
    covariate column is missing from the cohort, so that the model predicts without it)."""
    enc = loaded.covariates
    if enc is None or not enc.names:
        return None, False
    missing = [n for n in enc.names if n not in cohort.samples.columns]
    if missing:
        return None, True
    return enc.encode(cohort.samples.iloc[idx]), False


def evaluate_cohort(model_path: str | os.PathLike, cohort, *, split: str = "test", seed: int = 0) -> dict[str, Any]:
    """Metrics of the checkpoint on ``split`` of ``cohort`` (the training run's protocol)."""
    from flowrbc.calibration import ConformalInterval, interval_coverage
    from flowrbc.metrics import target_metrics
    from flowrbc.predict import load_model

    loaded = load_model(model_path)
    idx = _select(cohort, split)
    pred = predictions(loaded, cohort, idx, seed)
    metrics: dict[str, dict] = {}
    for name in loaded.targets:
        if name not in cohort.samples.columns:
            continue
        y = cohort.samples[name].to_numpy(dtype=np.float64, na_value=np.nan)[idx]
        ok = np.isfinite(y)
        if not ok.any():
            continue
        m = target_metrics(name, y[ok], pred[name][ok])
        cal = loaded.calibration.get(name, {})
        if _covariates(loaded, cohort, idx)[1]:
            cal = cal.get("covariates_unknown", cal)
        if "halfwidth" in cal:
            m["coverage"] = interval_coverage(pred[name][ok], y[ok], ConformalInterval.from_dict(cal))
        metrics[name] = {k: (v if math.isfinite(v) else None) for k, v in m.items()}
    return {"model": str(model_path), "split": split, "n": int(len(idx)), "metrics": metrics}


@torch.no_grad()
def embeddings(loaded, cohort, idx: np.ndarray, seed: int = 0, draws: int = 4, batch_size: int = 64) -> np.ndarray:
    """Mean over ``draws`` resampled sets of ``model.embed`` -> (len(idx), D)."""
    from flowrbc.predict import draw_sets

    X, offsets = _cohort_on_device(loaded, cohort)
    g = torch.Generator(device=X.device)
    g.manual_seed(seed)
    idx_t = torch.as_tensor(idx, dtype=torch.long, device=X.device)
    chunks = []
    for lo in range(0, len(idx_t), batch_size):
        batch = idx_t[lo : lo + batch_size]
        z = sum(loaded.model.embed(draw_sets(X, offsets, batch, loaded.cells, g)).float() for _ in range(draws))
        chunks.append((z / draws).cpu().numpy())
    return np.concatenate(chunks).astype(np.float32)


# scanpy 1.11 searches neighbours exactly (sklearn, brute force) below this many samples and
# approximately (pynndescent) from it on, for the euclidean metric.
APPROXIMATE_FROM = 8192


def _readable_nndescent(n_obs: int, n_neighbors: int, seed: int):
    """pynndescent's kNN transformer with the settings scanpy picks for ``n_obs`` samples, but
    returning its graph as ``csr_matrix``: pynndescent 0.7 returns ``csr_array``, which lacks the
    ``getnnz`` that scanpy 1.11 calls on the graph, so the search itself is scanpy's own."""
    from pynndescent import PyNNDescentTransformer
    from scipy.sparse import csr_matrix

    class ReadableNNDescent(PyNNDescentTransformer):
        def transform(self, X, y=None):
            return csr_matrix(super().transform(X, y))

    return ReadableNNDescent(n_neighbors=n_neighbors, random_state=seed,
                             n_trees=min(64, 5 + round(n_obs**0.5 / 20.0)),  # umap's defaults
                             n_iters=max(5, round(math.log2(n_obs))))


def patient_neighbors(adata, *, n_neighbors: int, seed: int = 0) -> None:
    """``sc.pp.neighbors`` on ``adata.X`` -> ``obsp['distances' | 'connectivities']``, on every cohort size.

    Below ``APPROXIMATE_FROM`` samples scanpy's exact search runs as it is; from there on the
    approximate search runs through ``_readable_nndescent`` so that scanpy can read its graph."""
    import scanpy as sc

    transformer = None if adata.n_obs < APPROXIMATE_FROM else _readable_nndescent(adata.n_obs, n_neighbors, seed)
    sc.pp.neighbors(adata, n_neighbors=n_neighbors, use_rep="X", random_state=seed, transformer=transformer)


def embed_cohort(model_path: str | os.PathLike, cohort, out: str | os.PathLike, *, seed: int = 0) -> dict[str, Path]:
    """Write a patient AnnData: X = set embeddings, obs = sample table + predictions,
    obsp/obsm from ``sc.pp.neighbors`` and ``sc.tl.umap``; and a UMAP PNG coloured by
    hematocrit (or the first target)."""
    import anndata
    import scanpy as sc

    from flowrbc.plots import embedding_umap
    from flowrbc.predict import load_model

    loaded = load_model(model_path)
    idx = _select(cohort, "all")
    Z = embeddings(loaded, cohort, idx, seed)
    obs = cohort.samples.iloc[idx].copy()
    obs.index = obs.index.astype(str)
    for name, value in predictions(loaded, cohort, idx, seed).items():
        obs[f"pred_{name}"] = value
    for col in obs.columns:  # h5ad needs plain column types
        if obs[col].dtype == object:
            obs[col] = obs[col].astype(str)
    adata = anndata.AnnData(X=Z, obs=obs)
    adata.uns["flowrbc"] = {"model": str(model_path), "family": loaded.family}
    patient_neighbors(adata, n_neighbors=min(15, max(2, len(idx) - 1)), seed=seed)
    sc.tl.umap(adata, random_state=seed)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.h5ad")
    adata.write_h5ad(tmp)
    os.replace(tmp, out)
    color_by = "hematocrit" if "hematocrit" in obs.columns else next(iter(loaded.targets))
    color = obs[color_by].to_numpy(dtype=np.float64) if color_by in obs.columns else obs[f"pred_{color_by}"].to_numpy()
    png = embedding_umap(adata.obsm["X_umap"], color, out.with_suffix(".png"), label=color_by)
    return {"h5ad": out, "png": png}
