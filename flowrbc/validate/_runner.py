"""The validation-suite runner: the task registry and running tasks by name.

Every task module (``normal_var.py`` …) exposes ``NAME``, ``TITLE`` and
``run(ctx: Context) -> TaskResult`` (``hematocrit.py`` also ``run_anemia``). A task trains
each of its model variants with ``flowrbc.fit.fit`` (through ``Context.train``, see
``_training``), scores them on held-out data next to a trivial baseline (mean predictor,
majority class or chance), and, where its protocol is the paper's, shows the paper's figure
beside ours (the records and tables are in ``_results``).
"""

from __future__ import annotations

import importlib
import time
from typing import Callable

from flowrbc.errors import FlowrbcError
from flowrbc.validate._results import TaskResult
from flowrbc.validate._training import Context

# Task name -> "module:function"; the order is the order ``flowrbc validate`` runs them in.
TASKS: dict[str, str] = {
    "normal-var": "flowrbc.validate.normal_var:run",
    "digits-var": "flowrbc.validate.digits_var:run",
    "point-cloud": "flowrbc.validate.point_cloud:run",
    "set-anomaly": "flowrbc.validate.set_anomaly:run",
    "hematocrit": "flowrbc.validate.hematocrit:run",
    "anemia": "flowrbc.validate.hematocrit:run_anemia",
    "image-reconstruction": "flowrbc.validate.image_reconstruction:run",
    "centroids": "flowrbc.validate.centroids:run",
    "mbc-consistency": "flowrbc.validate.mbc_consistency:run",
}


def task_names() -> list[str]:
    return list(TASKS)


def run_task(name: str, ctx: Context) -> TaskResult:
    """Run one task by name (see ``TASKS``)."""
    if name not in TASKS:
        raise FlowrbcError(f"task {name!r}: unknown; choose from {', '.join(TASKS)}")
    import torch

    module_name, func = TASKS[name].split(":")
    task = getattr(importlib.import_module(module_name), func)
    # The quick models are small: one intra-op thread avoids the spin-wait cost of several
    # threads on a busy 2-core CPU (measured: 9 ms vs 210 ms a step for a width-32 model).
    threads = ctx.threads if ctx.threads is not None else (1 if ctx.size != "full" else None)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        result = task(ctx)
    finally:
        torch.set_num_threads(before)
    result.wall_s = time.perf_counter() - t0
    return result


def run_suite(names: list[str] | None, ctx_factory: Callable[[str], Context]) -> list[TaskResult]:
    """Run ``names`` (all tasks when empty) in registry order, one Context per task."""
    names = list(names or TASKS)
    for n in names:
        if n not in TASKS:
            raise FlowrbcError(f"task {n!r}: unknown; choose from {', '.join(TASKS)}")
    return [run_task(n, ctx_factory(n)) for n in names]
