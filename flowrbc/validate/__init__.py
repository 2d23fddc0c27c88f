"""The papers' benchmark tasks as validation suites (``flowrbc validate``).

Each task lives in its own module (``normal_var``, ``digits_var``, ``point_cloud``,
``set_anomaly``, ``hematocrit`` (tasks ``hematocrit`` and ``anemia``),
``image_reconstruction``, ``centroids``, ``mbc_consistency``), states its data source and
protocol, and returns a ``TaskResult``. ``_runner`` holds the task registry, ``_training``
the glue to ``flowrbc.fit.fit`` and ``_results`` the result records and tables.
"""

from flowrbc.validate._results import Row, TaskResult, render_tables, write_results
from flowrbc.validate._runner import TASKS, run_suite, run_task, task_names
from flowrbc.validate._training import SIZES, Context, Variant

__all__ = [
    "SIZES",
    "TASKS",
    "Context",
    "Row",
    "TaskResult",
    "Variant",
    "render_tables",
    "run_suite",
    "run_task",
    "task_names",
    "write_results",
]
