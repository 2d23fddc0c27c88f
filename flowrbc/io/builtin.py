"""The built-in synthetic cohort and its on-disk cache.

``synthetic_cohort`` turns the simulator's patients into a ``Cohort`` the way ingest treats FCS
files (RBC gate, QC columns, a train/val/test split). ``load_default_cohort`` is what
``flowrbc train`` uses when given no data: generated once, then read from
``$FLOWRBC_CACHE`` (default ``~/.cache/flowrbc``) under a name that carries the generator and
file-format versions, so a change to either makes a fresh file. Kept apart from
``flowrbc.io.cohort`` so that reading and writing cohorts never touches the simulator.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from flowrbc.errors import CohortError
from flowrbc.io.cohort import FORMAT_VERSION, Cohort, add_qc_columns, assign_splits, read_cohort, write_cohort

DEFAULT_PATIENTS = 2000
DEFAULT_CELLS = 1000
DEFAULT_SEED = 0
FRESH_SEED = 1_000_003  # the independent cohort `flowrbc train` scores once; no choice ever sees it


def synthetic_cohort(n_patients: int = 2000, n_cells: int = 1000, seed: int = 0) -> Cohort:
    """The simulated cohort (``flowrbc.synthetic.simulate``) with the RBC gate applied, QC
    columns and a train/val/test split; same arguments, same cohort. The cohort-level figures
    of the cell bound (``flowrbc.synthetic.bound``) are kept in ``cohort.samples.attrs["bound"]``."""
    from flowrbc import pp
    from flowrbc.synthetic.simulate import CHANNELS, GENERATOR_VERSION, simulate_cohort

    sim = simulate_cohort(n_patients, n_cells, seed=seed)
    samples = sim.samples.set_index("sample_id")
    X, offsets = sim.cells, sim.offsets
    keep = pp.rbc_gate(X[:, 0], X[:, 1])
    n_events = np.diff(offsets)
    if not keep.all():  # drop the (rare) tail events the gate rejects, as ingest would
        kept = np.add.reduceat(keep.astype(np.int64), offsets[:-1]) if len(X) else n_events
        X = X[keep]
        offsets = np.concatenate([[0], np.cumsum(kept)]).astype(np.int64)
    samples["n_cells"] = np.diff(offsets)
    samples["n_events"] = n_events
    samples["n_gated"] = np.diff(offsets)
    samples["n_nonfinite"] = np.zeros(len(samples), dtype=np.int64)
    add_qc_columns(samples, X, offsets)
    samples["split"] = assign_splits(len(samples), seed)
    samples.attrs["bound"] = sim.bound
    return Cohort(
        X=X, offsets=offsets, samples=samples, channels=list(CHANNELS),
        roles={"volume": CHANNELS[0], "hemoglobin": CHANNELS[1]},
        source=f"synthetic v{GENERATOR_VERSION} n={n_patients} cells={n_cells} seed={seed}",
    )


def cache_dir() -> Path:
    """``$FLOWRBC_CACHE`` or ``~/.cache/flowrbc``."""
    env = os.environ.get("FLOWRBC_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "flowrbc"


def default_cohort_path(n_patients: int = DEFAULT_PATIENTS, n_cells: int = DEFAULT_CELLS, seed: int = DEFAULT_SEED) -> Path:
    from flowrbc.synthetic.simulate import GENERATOR_VERSION

    name = f"synthetic-g{GENERATOR_VERSION}-f{FORMAT_VERSION}-p{n_patients}-c{n_cells}-s{seed}.h5ad"
    return cache_dir() / name


def load_default_cohort(n_patients: int = DEFAULT_PATIENTS, n_cells: int = DEFAULT_CELLS, seed: int = DEFAULT_SEED) -> Cohort:
    """The built-in synthetic cohort, read from the cache or generated and cached (a cache
    file that cannot be read is regenerated)."""
    path = default_cohort_path(n_patients, n_cells, seed)
    if path.exists():
        try:
            return read_cohort(path)
        except (CohortError, OSError, KeyError):
            pass
    cohort = synthetic_cohort(n_patients, n_cells, seed)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_cohort(cohort, path)
    except OSError:  # a read-only home is no reason to fail; just don't cache
        pass
    return cohort
