"""Patient neighbour graphs (``flowrbc.embed.patient_neighbors``) on both sides of scanpy's
switch from exact to approximate search, against an exact search by sklearn."""

import numpy as np
import pytest
from scipy import sparse
from sklearn.neighbors import NearestNeighbors

from flowrbc.embed import APPROXIMATE_FROM, patient_neighbors

K = 15


def _patients(n: int, seed: int = 0):
    import anndata

    centres = np.random.default_rng(seed).normal(scale=4.0, size=(6, 8))
    rng = np.random.default_rng(seed + 1)
    X = centres[rng.integers(0, 6, n)] + rng.normal(size=(n, 8))  # (n, 8): six clusters
    return anndata.AnnData(X=X.astype(np.float32))


def _exact_neighbours(X: np.ndarray) -> np.ndarray:
    """(n, K - 1) indices of each point's nearest other points."""
    return NearestNeighbors(n_neighbors=K).fit(X).kneighbors(X, return_distance=False)[:, 1:]


def _graph_neighbours(distances) -> list[set[int]]:
    distances = sparse.csr_matrix(distances)
    return [set(distances.indices[lo:hi][distances.data[lo:hi] > 0])
            for lo, hi in zip(distances.indptr[:-1], distances.indptr[1:])]


def _recall(adata) -> float:
    found = _graph_neighbours(adata.obsp["distances"])
    exact = _exact_neighbours(adata.X)
    return float(np.mean([len(f & set(e)) / len(e) for f, e in zip(found, exact)]))


@pytest.mark.parametrize("n", [300, APPROXIMATE_FROM + 50], ids=["exact", "approximate"])
def test_neighbour_graph_on_both_sides_of_the_switch(n):
    adata = _patients(n)
    patient_neighbors(adata, n_neighbors=K, seed=0)
    conn = adata.obsp["connectivities"]
    assert adata.obsp["distances"].shape == conn.shape == (n, n)
    assert abs(conn - conn.T).max() < 1e-6 and conn.diagonal().max() == 0
    assert adata.uns["neighbors"]["params"]["n_neighbors"] == K
    recall = _recall(adata)
    assert recall == 1.0 if n < APPROXIMATE_FROM else recall > 0.95
