"""AnnData conversion: ``read_fcs`` and the keyword table stored in ``uns["fcs"]``.

anndata and pandas are imported inside ``read_fcs`` only (``flowrbc.io.fcs`` stays light).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from flowrbc.io.fcs._read import read_fcs_data

if TYPE_CHECKING:  # pragma: no cover
    import anndata


def read_fcs(path: str | os.PathLike, *, dataset: int = 0) -> "anndata.AnnData":
    """Read one data set as AnnData: ``X`` decoded scale values (float32), ``var`` indexed
    by unique $PnN with ``channel``, ``marker`` ($PnS or ""), ``range``, ``bits``,
    ``amplification`` ('f1,f2'), ``gain``; ``layers["raw"]`` the stored values where
    decoding changed them; ``uns["fcs"]`` keywords as ``{"key": [...], "value": [...]}``."""
    import anndata
    import pandas as pd

    d = read_fcs_data(path, dataset=dataset)
    var = pd.DataFrame(
        {
            "channel": [m["name"] for m in d.channel_meta],
            "marker": [lab or "" for lab in d.labels],
            "range": [np.nan if m["range"] is None else float(m["range"]) for m in d.channel_meta],
            "bits": np.array([m["bits"] for m in d.channel_meta], dtype=np.int64),
            "amplification": [f"{m['amplification'][0]:g},{m['amplification'][1]:g}" for m in d.channel_meta],
            "gain": np.array([m["gain"] for m in d.channel_meta], dtype=np.float64),
        },
        index=pd.Index(d.names, name="name"),
    )
    adata = anndata.AnnData(X=d.events, var=var)
    if d.raw is not None:
        adata.layers["raw"] = d.raw
    adata.uns["fcs"] = keywords_table(d.keywords)
    adata.uns["fcs_path"] = d.path
    adata.uns["fcs_version"] = d.version
    adata.uns["fcs_dataset"] = d.dataset
    adata.uns["fcs_n_datasets"] = d.n_datasets
    adata.uns["fcs_warnings"] = np.array(d.warnings, dtype=object)
    if d.spillover is not None:
        adata.uns["fcs_spillover"] = {"channels": np.array(d.spillover[0], dtype=object),
                                      "matrix": d.spillover[1]}
    return adata


def keywords_table(keywords: dict[str, str]) -> dict[str, np.ndarray]:
    """Keywords as two equal-length string arrays (h5ad-safe: keys may contain '/')."""
    return {"key": np.array(list(keywords), dtype=object),
            "value": np.array(list(keywords.values()), dtype=object)}


def keywords_from_table(table) -> dict[str, str]:
    """Inverse of ``keywords_table`` (also accepts a DataFrame with key/value columns)."""
    if table is None:
        return {}
    keys, values = table["key"], table["value"]
    return {str(k): str(v) for k, v in zip(list(keys), list(values))}

