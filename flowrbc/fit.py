"""The training loop of the project: ``fit`` (used by cohort training and the validation tasks).

``fit`` follows the papers' defaults: Adam (lr 1e-3, weight decay 5e-4), learning rate
×0.1 at 20/60/80 % of the epochs, bf16 autocast where it pays (``autocast_for``: the rule of
``flowrbc.precision``), the validation score checked once per epoch under ``torch.no_grad()``
and the best weights kept. ``autocast_for`` also serves prediction (``flowrbc.inputs``); a
checkpoint records the precision its model was validated in, and predicts in it.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from flowrbc.errors import FlowrbcError
from flowrbc.heap import keep_heap
from flowrbc.precision import resolve_precision


class TrainingDiverged(FlowrbcError):
    """The loss became NaN or infinite. ``result`` holds the history and the last good weights
    (already loaded back into the model)."""

    def __init__(self, message: str, result: "FitResult"):
        super().__init__(message)
        self.result = result


@dataclass
class FitConfig:
    epochs: int = 50
    steps_per_epoch: int | None = None  # None: every batch ``train_batches`` yields
    lr: float = 1e-3  # papers' default (MBC appendix)
    weight_decay: float = 5e-4  # papers' default, L2 through Adam
    milestones: tuple[float, ...] = (0.2, 0.6, 0.8)  # fractions of epochs where lr ×= gamma
    gamma: float = 0.1
    grad_clip: float | None = None  # max global grad norm; None = no clipping
    device: str = "auto"
    precision: str = "auto"  # "auto": bf16 autocast where it pays (``autocast_for``); "bf16"; "fp32" throughout
    seed: int = 0


@dataclass
class FitResult:
    best_state: dict[str, torch.Tensor]
    history: list[dict[str, float]]
    best_epoch: int  # 1-based epoch whose weights are ``best_state``
    best_score: float = math.inf


@dataclass
class FitProgress:
    """What a progress callback receives: after each step (``metrics`` empty) and after each
    epoch's evaluation (``end`` True, ``metrics`` the validation figures)."""

    epoch: int  # 1-based
    epochs: int
    step: int
    steps: int | None
    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    end: bool = False


@dataclass
class FitState:
    """The loop's state at the end of an epoch, given to ``on_epoch_end`` (checkpointing)."""

    epoch: int  # epochs completed
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    result: FitResult
    improved: bool

    def resume_state(self) -> dict[str, Any]:
        """Everything ``fit(..., resume=...)`` needs to continue exactly where this stopped."""
        return {
            "epoch": self.epoch,
            "model": cpu_state(_unwrap(self.model)),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": list(self.result.history),
            "best_state": self.result.best_state,
            "best_epoch": self.result.best_epoch,
            "best_score": self.result.best_score,
        }


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; ``"cuda"`` without a GPU is an error."""
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise FlowrbcError(f"--device {name!r}: not a device (use auto, cpu or cuda)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise FlowrbcError(f"--device {name!r}: CUDA is not available on this machine")
    return device


def autocast_for(device: torch.device, precision: str = "auto", width: int | None = None, train: bool = True):
    """bf16 autocast where ``flowrbc.precision.resolve_precision`` gives bf16 for ``precision``
    ("auto", "bf16" or "fp32") on ``device`` and a model of hidden size ``width`` (``train``
    False: forward passes only); nothing elsewhere. Norm statistics stay in float32
    (``flowrbc.models.norms``)."""
    if resolve_precision(precision, device, width, train) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_width(model: torch.nn.Module) -> int | None:
    """The hidden size of a set model (its ``config.width``); None for other modules."""
    return getattr(getattr(_unwrap(model), "config", None), "width", None)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)  # DistributedDataParallel keeps the model here


def cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s weights on the CPU (what checkpoints store)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _score(metrics: dict[str, float]) -> float:
    if not metrics:
        raise FlowrbcError("evaluate() returned no metrics: it must return at least a score")
    return float(metrics["score"] if "score" in metrics else next(iter(metrics.values())))


def _all_finite(loss: torch.Tensor) -> bool:
    finite = torch.isfinite(loss.detach()).all()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        flag = finite.to(torch.float32).reshape(1)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
        return bool(flag.item() > 0)  # every rank stops together
    return bool(finite)


def fit(
    model: torch.nn.Module,
    train_batches: Callable[[int, torch.Generator], Iterable[Any]],
    loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    *,
    config: FitConfig,
    evaluate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
    progress: Callable[[FitProgress], None] | None = None,
    on_epoch_end: Callable[[FitState], None] | None = None,
    resume: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` (already on its device) and return the best weights and the history.

    ``train_batches(epoch, generator)`` yields batches already on the device (``epoch`` is
    0-based; ``generator`` lives on the device and is the only source of randomness for
    drawing batches, so a fixed seed gives the same run). ``loss_fn(model, batch)`` returns a
    scalar. ``evaluate(model)`` returns metrics, once per epoch under ``torch.no_grad()`` in
    eval mode; its ``"score"`` (else its first value), lower is better, selects the weights.
    Without ``evaluate`` the last epoch's weights are kept. ``resume`` is a
    ``FitState.resume_state()`` dict: training continues from there, identically on CPU.

    A NaN/inf loss stops training: the last good weights are loaded back into the model and
    ``TrainingDiverged`` (a ``FlowrbcError``) carries the result so far. On a CPU, memory freed
    during training stays in the process for the next step (``flowrbc.heap.keep_heap``).
    """
    if config.epochs < 1:
        raise FlowrbcError(f"epochs={config.epochs}: must be at least 1")
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else resolve_device(config.device)
    base = _unwrap(model)
    torch.manual_seed(config.seed)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)

    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    milestones = sorted({max(1, round(m * config.epochs)) for m in config.milestones})
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=config.gamma)

    result = FitResult(best_state=cpu_state(base), history=[], best_epoch=0)
    start = 0
    if resume is not None:
        base.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        generator.set_state(resume["generator"])
        torch.set_rng_state(resume["torch_rng"])
        result = FitResult(
            best_state=resume["best_state"],
            history=list(resume["history"]),
            best_epoch=int(resume["best_epoch"]),
            best_score=float(resume["best_score"]),
        )
        start = int(resume["epoch"])

    steps = config.steps_per_epoch
    width = model_width(model)
    with keep_heap(device.type == "cpu"):  # freed activations stay in the process for the next step
        for epoch in range(start, config.epochs):
            model.train()
            t0 = time.perf_counter()
            batches = train_batches(epoch, generator)
            if steps is not None:
                batches = itertools.islice(batches, steps)
            total, n = 0.0, 0
            for step, batch in enumerate(batches, start=1):
                with autocast_for(device, config.precision, width):
                    loss = loss_fn(model, batch)
                if not _all_finite(loss):
                    base.load_state_dict(result.best_state)
                    raise TrainingDiverged(
                        f"training stopped: loss is {loss.item()} at epoch {epoch + 1}, step {step} "
                        f"(lower --lr or check the input scaling); "
                        + (f"weights of epoch {result.best_epoch} kept" if result.best_epoch else "initial weights kept"),
                        result,
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                value = float(loss.detach())
                total, n = total + value, n + 1
                if progress is not None:
                    progress(FitProgress(epoch + 1, config.epochs, step, steps, value))
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()

            metrics: dict[str, float] = {}
            if evaluate is not None:
                model.eval()
                with torch.no_grad(), autocast_for(device, config.precision, width, train=False):
                    metrics = {k: float(v) for k, v in evaluate(base).items()}
                score = _score(metrics)
            else:
                score = -float(epoch)  # no validation: the latest weights are the best
            improved = score < result.best_score or result.best_epoch == 0
            if improved:
                result.best_state = cpu_state(base)
                result.best_epoch, result.best_score = epoch + 1, score
            entry = {"epoch": epoch + 1, "loss": total / max(n, 1), "lr": lr, **metrics}
            entry["time_s"] = time.perf_counter() - t0
            result.history.append(entry)
            if progress is not None:
                progress(FitProgress(epoch + 1, config.epochs, n, steps, entry["loss"], metrics, True))
            if on_epoch_end is not None:
                on_epoch_end(FitState(epoch + 1, model, optimizer, scheduler, generator, result, improved))
    return result


def load_best(model: torch.nn.Module, result: FitResult) -> torch.nn.Module:
    """Load ``result.best_state`` into ``model`` (a copy of the weights, on the model's device)."""
    _unwrap(model).load_state_dict(copy.deepcopy(result.best_state))
    return model
