"""The glue between a validation task and ``flowrbc.fit.fit``: the model variants a task
trains (``Variant``), the papers' tables keyed by configuration, the per-task ``Context``
(size, seed, device, data, progress) and ``train_variants``, the loop most tasks share.

Sizes: ``toy`` (tests: seconds), ``quick`` (default: ≤ 3 minutes a task on a 2-core CPU),
``full`` (the papers' set sizes and epochs; meant for a GPU).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from flowrbc.errors import FlowrbcError
from flowrbc.validate._results import TaskResult

SIZES = ("toy", "quick", "full")


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

        from flowrbc.models import build_model

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
