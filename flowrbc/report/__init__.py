"""Patient and cohort reports: self-contained HTML pages (figures embedded) and PNG figures.

``write_patient_pages`` renders predictions already made by ``flowrbc.predict.predict_file``
(the numbers on a page are those ``flowrbc predict --format json`` prints); ``report_files``
predicts and renders FCS files; ``report_cohort`` writes a cohort overview with per-patient
pages. Importing this package is cheap: matplotlib loads only when a figure is drawn.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "write_patient_pages": "flowrbc.report.files",
    "report_files": "flowrbc.report.files",
    "report_cohort": "flowrbc.report.cohort",
    "healthy_reference": "flowrbc.report.reference",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'flowrbc.report' has no attribute {name!r}")
