r"""Import of the published Flow-RBC HDF5 layout (Zhang et al. 2022).

Keys: ``train_data`` and ``test_data`` float ``[N, cells, 2]`` (per cell: volume,
hemoglobin mass), ``train_labels`` and ``test_labels`` ``[N]`` or ``[N, 1]`` (hematocrit).
The train set becomes train + val (val: a deterministic 10 % of it), the test set stays test.
The data are read in chunks of samples straight into the cohort matrix, so memory stays at
the size of the result (the full train + test set is ~1 GB as float32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from flowrbc.errors import CohortError

KEYS = ("train_data", "train_labels", "test_data", "test_labels")
VAL_FRACTION = 0.10
_CHUNK = 2048  # samples per read


def _check_layout(f, path: Path, part: str) -> tuple[int, int]:
    data, labels = f"{part}_data", f"{part}_labels"
    for key in (data, labels):
        if key not in f:
            raise CohortError(f"{path}: missing key {key!r} (Flow-RBC layout needs {', '.join(KEYS)}; found {', '.join(f.keys()) or 'none'})")
    d, y = f[data], f[labels]
    if d.ndim != 3 or d.shape[2] != 2:
        raise CohortError(f"{path}: {data} has shape {d.shape}; expected [N, cells, 2] (volume, hemoglobin)")
    if y.ndim not in (1, 2) or (y.ndim == 2 and y.shape[1] != 1) or y.shape[0] != d.shape[0]:
        raise CohortError(f"{path}: {labels} has shape {y.shape}; expected [{d.shape[0]}] hematocrit values")
    return int(d.shape[0]), int(d.shape[1])


def import_flowrbc_h5(path, *, max_samples: int | None = None, seed: int = 0, on_chunk=None):
    """Read a Flow-RBC HDF5 file into a ``Cohort`` (channels ``RBC Volume``, ``RBC Hb``).

    ``max_samples`` caps the samples taken from each of the train and test sets (the first
    ones). ``on_chunk(n_done, n_total)`` reports progress. Bad layout: ``CohortError``
    naming the file and the problem.
    """
    import pandas as pd

    from flowrbc.io.cohort import Cohort, add_qc_columns, open_hdf5
    from flowrbc.synthetic.simulate import CHANNELS

    path = Path(path)
    with open_hdf5(path) as f:
        sizes = {part: _check_layout(f, path, part) for part in ("train", "test")}
        take = {p: n if max_samples is None else min(n, max_samples) for p, (n, _) in sizes.items()}
        total_cells = sum(take[p] * sizes[p][1] for p in take)
        X = np.empty((total_cells, 2), dtype=np.float32)
        counts, ids, labels, parts = [], [], [], []
        row = 0
        done, n_total = 0, sum(take.values())
        for part in ("train", "test"):
            n, m = take[part], sizes[part][1]
            d = f[f"{part}_data"]
            for lo in range(0, n, _CHUNK):
                hi = min(n, lo + _CHUNK)
                block = np.asarray(d[lo:hi], dtype=np.float32).reshape(-1, 2)  # (k * m, 2)
                X[row : row + len(block)] = block
                row += len(block)
                done += hi - lo
                if on_chunk is not None:
                    on_chunk(done, n_total)
            y = np.asarray(f[f"{part}_labels"][:n], dtype=np.float64).reshape(-1)
            if not np.all(np.isfinite(y)):
                raise CohortError(f"{path}: {part}_labels has {int((~np.isfinite(y)).sum())} non-finite values")
            labels.append(y)
            counts.append(np.full(n, m, dtype=np.int64))
            width = max(6, len(str(n)))
            ids += [f"{part}-{i:0{width}d}" for i in range(n)]
            parts.append(_splits(part, n, seed))
    counts = np.concatenate(counts)
    samples = pd.DataFrame(
        {"hematocrit": np.concatenate(labels), "split": np.concatenate(parts), "n_cells": counts},
        index=pd.Index(ids, name="sample_id"),
    )
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    add_qc_columns(samples, X, offsets)  # cells are kept as published; QC counts what the gate would drop
    return Cohort(X=X, offsets=offsets, samples=samples, channels=list(CHANNELS),
                  roles={"volume": CHANNELS[0], "hemoglobin": CHANNELS[1]}, source=f"flow-rbc {path.name}")


def _splits(part: str, n: int, seed: int) -> np.ndarray:
    """test -> all "test"; train -> "train" with a deterministic VAL_FRACTION as "val"."""
    if part == "test":
        return np.full(n, "test", dtype=object)
    out = np.full(n, "train", dtype=object)
    n_val = int(round(n * VAL_FRACTION)) if n >= 10 else 0
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0xF10,)))
    out[rng.permutation(n)[:n_val]] = "val"
    return out

