"""The validation-suite runner: task registry, the shared model/training glue, result tables.

Every task module (``normal_var.py`` …) exposes ``NAME``, ``TITLE`` and
``run(ctx: Context) -> TaskResult`` (``hematocrit.py`` also ``run_anemia``). A task trains each of its model variants with
``flowrbc.fit.fit`` (through ``Context.train``), scores them on held-out data next to a
trivial baseline (mean predictor, majority class or chance), and, where its protocol is the
paper's, shows the paper's figure beside ours.

Sizes: ``toy`` (tests: seconds), ``quick`` (default: ≤ 3 minutes a task on a 2-core CPU),
``full`` (the papers' set sizes and epochs; meant for a GPU).
"""

from __future__ import annotations

import importlib
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from flowrbc.errors import FlowrbcError

SIZES = ("toy", "quick", "full")

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


# --------------------------------------------------------------------------- results
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


# --------------------------------------------------------------------------- models
@dataclass(frozen=True)
class Variant:
    """A model to train: ModelConfig fields plus a display label."""

    family: str
    depth: int
    norm: str | None = None  # None: the family's default
    residual: str | None = None
    options: tuple[tuple[str, Any], ...] = ()  # further ModelConfig fields, e.g. (("pooling", "max"),)
    label: str = ""

    def config(self, *, in_features: int, outputs: dict[str, int], width: int):
        from flowrbc.models.config import ModelConfig

        opts = dict(self.options)
        if self.family.startswith("set_transformer") and width % opts.get("heads", 4):
            opts["heads"] = 1
        return ModelConfig(
            family=self.family,
            in_features=in_features,
            depth=self.depth,
            width=width,
            norm=self.norm,
            residual=self.residual,
            outputs=dict(outputs),
            **opts,
        )

    def name(self) -> str:
        return self.label or self.family


def paper_key(cfg) -> tuple[str, str, str, int]:
    """(kind, norm, residual, depth) of a ModelConfig, the key of the papers' tables:
    kind "ds" for the Deep Sets families, "st" for the Set Transformer families."""
    kind = "ds" if cfg.family.startswith("deepsets") else "st" if cfg.family.startswith("set_transformer") else cfg.family
    return kind, cfg.norm, cfg.residual, int(cfg.depth)


# Zhang et al. (DS++ paper) Table 2 rows by configuration: original Deep Sets (no norm, no
# residual), Deep Sets++ (set norm, clean path), Set Transformer (its own post-add residual,
# no norm), Set Transformer++ (set norm, clean path).
def table2(ds: tuple, dspp: tuple, st: tuple, stpp: tuple) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for depth, value in zip((3, 25, 50), ds):
        out["ds", "none", "none", depth] = value
    for depth, value in zip((3, 25, 50), dspp):
        out["ds", "set", "clean", depth] = value
    for depth, value in zip((2, 8, 16), st):
        out["st", "none", "nonclean", depth] = value
    for depth, value in zip((2, 8, 16), stpp):
        out["st", "set", "clean", depth] = value
    return out


# DS++ paper Table 1: residual type × norm at depth 50 (Deep Sets) and 16 (Set Transformer).
def table1(ds: dict[tuple[str, str], float], st: dict[tuple[str, str], float]) -> dict[tuple, float]:
    out: dict[tuple, float] = {}
    for (residual, norm), value in ds.items():
        out["ds", norm, residual, 50] = value
    for (residual, norm), value in st.items():
        out["st", norm, residual, 16] = value
    return out


# --------------------------------------------------------------------------- context
@dataclass
class Context:
    """What a task needs from the caller: size, seed, device, data and the progress hook."""

    size: str = "quick"
    seed: int = 0
    device: str = "auto"
    data_dir: Path | None = None
    families: tuple[str, ...] = ()  # --model filter; empty = every variant of the task
    threads: int | None = None  # CPU threads for torch; None: 1 for toy/quick, torch's default for full
    report: Callable[[float, str], None] | None = None  # (fraction done, status)
    _units: int = 1
    _done: int = 0

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise FlowrbcError(f"size {self.size!r}: expected one of {', '.join(SIZES)}")

    # ---- selection and progress
    def select(self, variants: list[Variant]) -> list[Variant]:
        """The variants the ``--model`` filter keeps (by family or label)."""
        if not self.families:
            return list(variants)
        keep = {f.lower() for f in self.families}
        return [v for v in variants if v.family.lower() in keep or v.label.lower() in keep]

    def plan(self, units: int) -> None:
        """Announce how many units (usually models) the task will train."""
        self._units, self._done = max(units, 1), 0
        self._tick(0.0, "")

    def _tick(self, within: float, status: str) -> None:
        if self.report is not None:
            self.report(min(1.0, (self._done + within) / self._units), status)

    def unit_done(self, status: str = "") -> None:
        self._done += 1
        self._tick(0.0, status)

    @property
    def torch_device(self):
        from flowrbc.fit import resolve_device

        return resolve_device(self.device)

    # ---- models and training
    def build(self, variant: Variant, *, in_features: int, outputs: dict[str, int], width: int):
        """The variant's model on the device, with weights fixed by the seed."""
        import torch

        from flowrbc.models.config import build_model

        torch.manual_seed(self.seed)
        cfg = variant.config(in_features=in_features, outputs=outputs, width=width)
        return build_model(cfg).to(self.torch_device), cfg

    def train(
        self,
        model,
        sample: Callable[[Any], Any],
        loss_fn: Callable[[Any, Any], Any],
        *,
        epochs: int,
        steps: int,
        lr: float,
        evaluate: Callable[[Any], dict[str, float]] | None = None,
        label: str = "",
        weight_decay: float = 5e-4,
        grad_clip: float | None = None,
    ):
        """Train with ``flowrbc.fit.fit``: ``steps`` batches of ``sample(generator)`` per
        epoch; the best weights on ``evaluate`` (if given) are loaded back. Returns FitResult."""
        from flowrbc.fit import FitConfig, fit, load_best

        def batches(epoch: int, generator) -> Iterator[Any]:
            for _ in range(steps):
                yield sample(generator)

        def on_progress(p) -> None:
            within = ((p.epoch - 1) + (p.step / steps if not p.end else 1.0)) / epochs
            status = f"{label} epoch {p.epoch}/{epochs} loss {p.loss:.4g}"
            self._tick(min(within, 1.0), status)

        # The papers' schedule (×0.1 at 20/60/80 %) for full runs; short runs keep the
        # initial rate longer, or a model that starts slowly never leaves its plateau.
        milestones = (0.2, 0.6, 0.8) if self.size == "full" else (0.6, 0.85)
        config = FitConfig(
            epochs=epochs,
            milestones=milestones,
            steps_per_epoch=steps,
            lr=lr,
            weight_decay=weight_decay,
            grad_clip=grad_clip,
            device=self.device,
            seed=self.seed,
        )
        result = fit(model, batches, loss_fn, config=config, evaluate=evaluate, progress=on_progress)
        load_best(model, result)
        model.eval()
        return result


def train_variants(
    ctx: Context,
    result: TaskResult,
    variants: list[Variant],
    *,
    in_features: int,
    outputs: dict[str, int],
    width: int,
    sample: Callable[[Any], Any],
    loss_fn: Callable[[Any, Any], Any],
    validate: Callable[[Any], float],
    test: Callable[[Any], tuple[float, dict[str, Any]]],
    baseline: float,
    epochs: int,
    steps: int,
    lr: float,
    paper: dict[tuple, float] | None = None,
    grad_clip: float | None = None,
) -> None:
    """Train each variant, score it on the test data and append its Row to ``result``.

    ``validate(model)`` (lower is better) picks the epoch; ``test(model)`` returns the task
    metric and extra figures for the row.
    """
    import torch

    ctx.plan(len(variants))
    for v in variants:
        t0 = time.perf_counter()
        model, cfg = ctx.build(v, in_features=in_features, outputs=outputs, width=width)
        label = f"{v.name()} d{cfg.depth} {cfg.norm}"
        fit = ctx.train(
            model,
            sample,
            loss_fn,
            epochs=epochs,
            steps=steps,
            lr=lr,
            evaluate=lambda m: {"score": validate(m)},
            label=label,
            grad_clip=grad_clip,
        )
        with torch.no_grad():
            metric, extra = test(model)
        result.add_row(
            v.name(), cfg, metric, baseline, started=t0, paper=(paper or {}).get(paper_key(cfg)),
            extra={"best_epoch": fit.best_epoch, **extra},
        )
        ctx.unit_done(f"{label}: {metric:.4g}")


def batched(model, x, head: str, chunk: int = 256, mask=None):
    """``model(x)[head]`` over the first axis in chunks (bounded memory at test time)."""
    import torch

    outs = []
    for i in range(0, len(x), chunk):
        m = None if mask is None else mask[i : i + chunk]
        outs.append(model(x[i : i + chunk], m)[head])
    return torch.cat(outs)


# --------------------------------------------------------------------------- running
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
