"""Patient-level embeddings of a checkpoint's set model as AnnData, with neighbors and UMAP
(``embed_cohort``); the predictions beside them come from the same predictor."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

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

    from flowrbc.evaluate import select_samples
    from flowrbc.plots import embedding_umap
    from flowrbc.predictor import Predictor

    predictor = Predictor.load(model_path)
    idx = select_samples(cohort, "all")
    prep = predictor.prepare_cohort(cohort, idx)
    Z = predictor.embeddings(prep, seed=seed)
    obs = cohort.samples.iloc[idx].copy()
    obs.index = obs.index.astype(str)
    for name, value in predictor.calibrated(predictor.predict(prep, seed=seed)[0]).items():
        obs[f"pred_{name}"] = value
    for col in obs.columns:  # h5ad needs plain column types
        if obs[col].dtype == object:
            obs[col] = obs[col].astype(str)
    adata = anndata.AnnData(X=Z, obs=obs)
    adata.uns["flowrbc"] = {"model": str(model_path), "family": predictor.family}
    patient_neighbors(adata, n_neighbors=min(15, max(2, len(idx) - 1)), seed=seed)
    sc.tl.umap(adata, random_state=seed)
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp.h5ad")
    adata.write_h5ad(tmp)
    os.replace(tmp, out)
    color_by = "hematocrit" if "hematocrit" in obs.columns else next(iter(predictor.targets))
    color = obs[color_by].to_numpy(dtype=np.float64) if color_by in obs.columns else obs[f"pred_{color_by}"].to_numpy()
    png = embedding_umap(adata.obsm["X_umap"], color, out.with_suffix(".png"), label=color_by)
    return {"h5ad": out, "png": png}
