"""The papers' benchmark tasks as validation suites (``flowrbc validate``).

Each task lives in its own module (``normal_var``, ``digits_var``, ``point_cloud``,
``set_anomaly``, ``hematocrit`` (tasks ``hematocrit`` and ``anemia``),
``image_reconstruction``, ``centroids``, ``mbc_consistency``), states its data source and
protocol, and returns a ``TaskResult``. The runner (``_runner``) holds the registry, the
glue to ``flowrbc.fit.fit`` and the result tables.
"""

from flowrbc.validate._runner import (
    SIZES,
    TASKS,
    Context,
    Row,
    TaskResult,
    Variant,
    render_tables,
    run_suite,
    run_task,
    task_names,
    write_results,
)

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
