"""What a validation task returns and how it is shown: ``Row`` and ``TaskResult``, the
baseline comparison, ``validate.json`` and the rich tables ``flowrbc validate`` prints.

The training glue is in ``_training``, the task registry in ``_runner``.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Row:
    """One trained (or checked) model on one task."""

    model: str  # family, or a label such as "SSE" / "Deep Sets (mean)"
    norm: str
    residual: str
    depth: int
    metric: float  # the task's metric on held-out data
    baseline: float  # the trivial baseline's value of the same metric
    beats_baseline: bool | None  # None where no baseline applies (mbc-consistency)
    paper: float | None = None  # the paper's figure for this configuration, where it exists
    wall_s: float = 0.0  # build + train + score
    extra: dict[str, Any] = field(default_factory=dict)  # task-specific figures


@dataclass
class TaskResult:
    task: str
    title: str
    metric: str  # e.g. "test MSE"
    higher_is_better: bool
    baseline_name: str  # e.g. "mean predictor"
    data: str  # what data was used, said plainly
    real_data: bool  # False: the offline substitute
    protocol: str  # set sizes, splits, epochs …
    paper_ref: str  # the paper table the "paper" column comes from ("" if none)
    size: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))

    def add_row(
        self, model: str, cfg: Any, metric: float, baseline: float, *, started: float,
        judged: bool = True, paper: float | None = None, extra: dict[str, Any] | None = None,
    ) -> None:
        """Record ``model`` (built from ``cfg``) scoring ``metric``; wall time since ``started``."""
        metric, baseline = float(metric), float(baseline)
        self.rows.append(
            Row(
                model=model,
                norm=cfg.norm,
                residual=cfg.residual,
                depth=int(cfg.depth),
                metric=metric,
                baseline=baseline,
                beats_baseline=beats(metric, baseline, self.higher_is_better) if judged else None,
                paper=paper,
                wall_s=time.perf_counter() - started,
                extra=extra or {},
            )
        )


def _finite(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def beats(metric: float, baseline: float, higher_is_better: bool) -> bool:
    """Strictly better than the trivial baseline (a NaN never beats it)."""
    if not (math.isfinite(metric) and math.isfinite(baseline)):
        return False
    margin = 1e-3 * abs(baseline)  # within 0.1 % is a tie, not a win
    return metric > baseline + margin if higher_is_better else metric < baseline - margin


def write_results(results: list[TaskResult], out_dir: str | Path) -> Path:
    """Write ``validate.json`` into ``out_dir`` atomically (temp file, then rename)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "validate.json"
    payload = json.dumps([r.to_dict() for r in results], indent=2)
    fd, tmp = tempfile.mkstemp(prefix=".validate.", suffix=".json", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(payload)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fmt(value: float | None, digits: int = 4) -> str:
    if value is None:
        return "—"
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def render_tables(results: list[TaskResult]) -> list[Any]:
    """One rich Table per task: model × norm × residual × depth → metric, baseline, paper."""
    from rich.table import Table

    tables = []
    for r in results:
        kind = "real data" if r.real_data else "offline substitute"
        caption = [f"data: {r.data} ({kind})", f"protocol: {r.protocol}"]
        if r.paper_ref:
            caption.append(f"paper column: {r.paper_ref}")
        caption += r.notes
        caption.append(f"task wall time {r.wall_s:.1f} s")
        better = "↑" if r.higher_is_better else "↓"
        table = Table(
            title=f"{r.task}: {r.title} [{r.size}]",
            caption="\n".join(caption),
            caption_justify="left",
        )
        for col in ("model", "norm", "residual", "depth"):
            table.add_column(col)
        table.add_column(f"{r.metric} {better}", justify="right")
        table.add_column(r.baseline_name, justify="right")
        table.add_column("beats", justify="center")
        table.add_column("paper", justify="right")
        table.add_column("wall s", justify="right")
        table.add_column("details")
        for row in r.rows:
            flag = "—" if row.beats_baseline is None else ("yes" if row.beats_baseline else "[red]no[/]")
            details = ", ".join(f"{k}={_fmt(v, 3) if isinstance(v, float) else v}" for k, v in row.extra.items())
            table.add_row(
                row.model,
                row.norm,
                row.residual,
                str(row.depth),
                _fmt(row.metric),
                _fmt(row.baseline),
                flag,
                _fmt(row.paper),
                f"{row.wall_s:.1f}",
                details,
            )
        tables.append(table)
    return tables
