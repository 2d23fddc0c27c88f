"""Reading and writing: FCS files, cohorts, the Flow-RBC HDF5 layout.

``flowrbc.io.read_fcs`` and the rest are resolved on first use, so that importing one
submodule (``flowrbc.io.fcs`` on the predict path) loads nothing else.
"""

import importlib

_EXPORTS = {
    "read_fcs": "fcs",
    "read_fcs_data": "fcs",
    "write_fcs": "fcs",
    "write_fcs_arrays": "fcs",
    "FCSData": "fcs",
    "resolve_channels": "channels",
    "Cohort": "cohort",
    "read_cohort": "cohort",
    "write_cohort": "cohort",
    "synthetic_cohort": "builtin",
    "load_default_cohort": "builtin",
    "ingest_fcs": "ingest",
    "import_flowrbc_h5": "flowrbc_h5",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'flowrbc.io' has no attribute {name!r}")
    return getattr(importlib.import_module(f"flowrbc.io.{_EXPORTS[name]}"), name)
