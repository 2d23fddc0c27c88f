"""Cohort training: config -> data -> model -> ``fit`` -> save.

Run commands::

    flowrbc train                                   # built-in synthetic cohort, CPU or GPU
    flowrbc train cohort.h5ad --model deepsets++ --depth 50 --target hematocrit --target anemia
    torchrun --nproc_per_node 4 -m flowrbc train cohort.h5ad --epochs 100   # data parallel

The data (``flowrbc.prepare``) is the cohort through the predictor's inputs; the loop is
``flowrbc.fit``; what follows the epochs (calibration, scores against the baseline and the
bound) is ``flowrbc.assess``.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowrbc.errors import FlowrbcError
from flowrbc.fit import FitConfig, FitProgress, FitState, cpu_state, fit, resolve_device
from flowrbc.precision import PRECISIONS, describe_precision, resolve_precision


READS = ("all", "sets")  # TrainConfig.read


class TrainingInterrupted(FlowrbcError):
    """Ctrl-C during training; the message says where the last good checkpoint is."""


@dataclass
class TrainConfig:
    """A cohort training run. Defaults train the built-in cohort in a few CPU minutes."""

    model: str = "deepsets++"  # set norm + clean residuals: stable at any depth
    depth: int = 3  # encoder blocks; the papers go to 50 (DS++) / 16 (ST++) on GPUs
    width: int = 64  # hidden size; 128 in the papers, 64 keeps CPU epochs short
    norm: str | None = None  # None: the family's default
    residual: str | None = None  # None: the family's default
    inducing: int | None = None  # set_transformer families: ISAB inducing points (None: 32; 0: full attention)
    lean: bool | None = None  # ModelConfig.lean; None: on where measured to pay (``lean_by_default``)
    targets: tuple[str, ...] | None = None  # None: the known targets the cohort has
    covariates: tuple[str, ...] | None = None  # None: sex and age where the cohort has them; (): none
    covariate_dropout: float = 0.2  # share of training sets whose each covariate reads "unknown"
    set_size: int | None = 250  # cells per training set, redrawn every step; None: as many as the
    # patient has (``flowrbc.prepare.TrainingData.draw``). Papers use 1000. At equal CPU time,
    # validation MSE 10.95 (250 x 50 epochs) vs 11.9 (500 x 25) and 11.3 (128 x 100)
    read: str = "all"  # how the predictor reads a patient: "all" every cell in one set, the decoder
    # refitted on whole-patient embeddings after the epochs (``flowrbc.decoder_fit``); "sets" the
    # average over disjoint sets of ``set_size`` cells, the decoder as trained
    epochs: int = 50  # ~2.5 min on 2 CPU cores; 80 epochs did no better (best epoch 35)
    batch_size: int = 16  # sets per step (per process under torchrun); more steps per epoch
    lr: float = 1e-3
    weight_decay: float = 1e-4  # validation MSE 10.75 vs 10.95 at the papers' 5e-4 (built-in cohort)
    milestones: tuple[float, ...] = (0.5, 0.75, 0.9)  # lr x0.1 at these fractions of the epochs;
    # the papers' (0.2, 0.6, 0.8) left most epochs at lr <= 1e-4: validation MSE 11.46 vs 10.95
    device: str = "auto"
    precision: str = "auto"  # "auto": bf16 where it pays (flowrbc.precision), "bf16" or "fp32"
    seed: int = 0
    coverage: float = 0.9  # nominal coverage of the hematocrit interval
    val_draws: int = 1  # fixed draws per validation sample for checkpoint selection
    hybrid: bool = True  # regression targets: the set model averaged with two index models
    # (flowrbc.hybrid); fresh hematocrit MSE 9.23 vs 10.00 for the set model alone (seed 779 cohort)
    index_inputs: bool = True  # the index features also as decoder inputs of the set model
    # (flowrbc.hybrid.IndexInputs): set model alone -0.21 / -0.23 +- 0.12 MSE, AUROC +0.004 (cohorts 777, 779)
    threads: int | None = 1  # CPU threads; small set models run faster on one (measured: on a
    # busy 2-core CPU, 2 threads were 40x slower than 1); None: torch's default

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})

    def check(self) -> None:
        for name in ("set_size", "epochs", "batch_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise FlowrbcError(f"--{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if not 0.0 <= self.covariate_dropout < 1.0:
            raise FlowrbcError(f"--covariate-dropout {self.covariate_dropout}: must be in [0, 1)")
        if self.read not in READS:
            raise FlowrbcError(f"--read {self.read}: use {', '.join(READS)}")
        if self.precision not in PRECISIONS:
            raise FlowrbcError(f"--precision {self.precision}: use {', '.join(PRECISIONS)}")


@dataclass
class TrainResult:
    run_dir: Path  # model.pt, metrics.json, plots
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int
    samples: dict | None = None  # the test split's per-sample predictions (flowrbc.assess.sample_predictions)


def distributed() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; initialises the process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def epoch_shard(train_idx: torch.Tensor, epoch: int, seed: int, rank: int, world: int, batch_size: int):
    """This rank's batches of one epoch: one permutation of the training samples per epoch,
    the same on every rank (seeded by ``seed`` and ``epoch``), dealt out in turn, so that the
    ranks' samples are disjoint and together cover the epoch (when the ranks do not divide
    the samples, the first ``-n % world`` of the permutation are dealt twice, so that every rank
    takes the same number of steps). -> list of (B,) index tensors."""
    g = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + epoch)
    perm = train_idx[torch.randperm(len(train_idx), generator=g).to(train_idx.device)]
    short = -len(perm) % world  # every rank the same number of steps: the first samples again
    mine = torch.cat([perm, perm[:short]])[rank::world]
    return [mine[lo : lo + batch_size] for lo in range(0, len(mine), batch_size)]


def default_run_dir(config: TrainConfig, root: str = "runs") -> Path:
    return Path(root) / f"{time.strftime('%Y%m%d-%H%M%S')}-{config.model.replace('+', 'p')}"


def train_cohort(cohort, config: TrainConfig, out_dir=None, *, resume: bool = False,
                 progress: Callable[[FitProgress], None] | None = None,
                 on_epoch_end: Callable[[FitState], None] | None = None,
                 log: Callable[[str], None] | None = None, plots: bool = True, fresh=None,
                 reference: Callable[[], dict] | None = None) -> TrainResult:
    """Train a set model on ``cohort`` (flowrbc.io.cohort.Cohort) and write the run.

    Validation chooses the weights (once per epoch, fixed draws); then the validation split
    fits the calibration and the test split is scored once, beside the moments baseline and
    (synthetic cohorts) the cell bound (``flowrbc.assess.finish``). ``fresh``: an independent
    cohort scored once at the end, never used for any choice; ``reference()``: another
    predictor's predictions on it (target -> (n_fresh,)), scored beside the model.
    ``out_dir`` receives model.pt, last.pt (for ``resume``), metrics.json and plots;
    ``runs/latest`` points at it. Under torchrun each rank trains on its shard of every epoch
    (``epoch_shard``) and only rank 0 writes."""
    threads = torch.get_num_threads()
    try:
        if config.threads and resolve_device(config.device).type == "cpu":
            torch.set_num_threads(config.threads)
        return _train(cohort, config, out_dir, resume, progress, on_epoch_end, log or (lambda msg: None),
                      plots, fresh, reference)
    finally:
        torch.set_num_threads(threads)


def _train(cohort, config, out_dir, resume, progress, on_epoch_end, say, plots, fresh, reference) -> TrainResult:
    from flowrbc import assess
    from flowrbc.checkpoint import load_resume_state, save_checkpoint, save_resume_state, update_latest
    from flowrbc.models import ModelConfig, build_model
    from flowrbc.prepare import TrainingData, data_fingerprint

    t_start = time.perf_counter()
    config.check()
    rank, world = distributed()
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(config)
    fingerprint = data_fingerprint(cohort)
    state = load_resume_state(run_dir / "last.pt") if resume else None
    if state is not None:
        saved = TrainConfig.from_dict(state["train_config"]).to_dict()
        if saved != config.to_dict():
            diff = [k for k, v in config.to_dict().items() if v != saved.get(k)]
            raise FlowrbcError(f"--resume {run_dir}: options differ from the interrupted run ({', '.join(diff)})")
        if state["fingerprint"] != fingerprint:
            raise FlowrbcError(f"--resume {run_dir}: the cohort differs from the one the run started on")

    # data
    data = TrainingData.of(cohort, targets=config.targets, covariates=config.covariates,
                           index_inputs=config.index_inputs, set_size=config.set_size, device=device)
    predictor = data.predictor
    precision = {"train": resolve_precision(config.precision, device, config.width, train=True),
                 "predict": resolve_precision(config.precision, device, config.width, train=False)}
    predictor.precision = precision["predict"]  # validation, calibration and the test predict as the checkpoint will
    say(f"cohort {cohort.source}: " + ", ".join(f"{k} {len(v)}" for k, v in data.split.items())
        + f" samples; targets {', '.join(data.specs)}; {config.set_size or 'all'} cells per set; covariates "
        f"{', '.join(predictor.covariates.names) or 'none'}; device {device}" + (f" x {world}" if world > 1 else "")
        + f"; {describe_precision(config.precision, device, config.width, train=True)}"
        + ("" if precision["predict"] == precision["train"] else f", predicting in {precision['predict']}"))

    # model
    torch.manual_seed(config.seed)  # the same initial weights on every rank
    model_config = ModelConfig(family=config.model, in_features=len(predictor.roles), depth=config.depth,
                               width=config.width, norm=config.norm, residual=config.residual,
                               inducing=config.inducing, covariates=data.decoder_width,
                               outputs={name: 1 for name in data.specs})
    model_config.lean = lean_by_default(model_config, device, precision["train"]) if config.lean is None else config.lean
    model = build_model(model_config).to(device)
    net = model if world == 1 else torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)

    # fit
    train_idx = torch.as_tensor(data.split["train"], device=device)
    val_idx = torch.as_tensor(data.split["val"], device=device)

    def batches(epoch: int, generator: torch.Generator):
        for idx in epoch_shard(train_idx, epoch, config.seed, rank, world, config.batch_size):
            x, mask = data.draw(idx, config.set_size, generator)
            yield x, mask, data.decoder_inputs(idx, config.covariate_dropout, generator), idx

    def loss_fn(m, batch):
        x, mask, cov, idx = batch
        return data.loss(m(x, mask=mask, covariates=cov), idx)[0]

    def evaluate(m):
        g = torch.Generator(device=device).manual_seed(config.seed + 1_000_003)  # the same sets every epoch
        sums: dict[str, float] = {}
        for _ in range(config.val_draws):
            for lo in range(0, len(val_idx), config.batch_size):
                idx = val_idx[lo : lo + config.batch_size]
                x, mask = data.draw(idx, config.set_size, g)
                _, parts = data.loss(m(x, mask=mask, covariates=data.decoder_inputs(idx)), idx)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
        parts = {k: v / (len(val_idx) * config.val_draws) for k, v in sums.items()}
        out = {"score": sum(parts.values())}
        for name, value in parts.items():
            spec = data.specs[name]
            out[f"val_{name}_rmse" if spec["kind"] == "regression" else f"val_{name}_bce"] = (
                math.sqrt(value) * spec["std"] if spec["kind"] == "regression" else value)
        return out

    meta = {"model_config": model_config.to_dict(), "train_config": config.to_dict(), "channels": predictor.channels,
            "scaler": predictor.scaler.to_dict(), "targets": data.specs, "covariates": predictor.covariates.to_dict(),
            "index_inputs": None if predictor.index_inputs is None else predictor.index_inputs.to_state(),
            "index_models": None, "fingerprint": fingerprint, "cohort": cohort.source, "versions": _versions(),
            "precision": precision["predict"], "read_size": config.set_size}

    def checkpoint_epoch(fs: FitState) -> None:
        if rank == 0:
            if fs.improved:
                save_checkpoint(run_dir / "model.pt", dict(meta, state_dict=fs.result.best_state, complete=False,
                                                           best_epoch=fs.result.best_epoch))
            save_resume_state(run_dir / "last.pt", dict(fs.resume_state(), train_config=config.to_dict(),
                                                        fingerprint=fingerprint))
            if fs.epoch == 1 or fs.improved:
                update_latest(run_dir)
        if on_epoch_end is not None:
            on_epoch_end(fs)

    steps = max(1, math.ceil(len(train_idx) / (config.batch_size * world)))
    fit_config = FitConfig(epochs=config.epochs, steps_per_epoch=steps, lr=config.lr, weight_decay=config.weight_decay,
                           milestones=tuple(config.milestones), device=str(device), precision=config.precision,
                           seed=config.seed + rank)
    # what the finishing step needs from the cohort alone fits on a second thread during the epochs
    fits = assess.Background(lambda: assess.cohort_fits(data, cohort, config.hybrid, config.seed)) if rank == 0 else None
    try:
        result = fit(net, batches, loss_fn, config=fit_config, evaluate=evaluate, progress=progress,
                     on_epoch_end=checkpoint_epoch, resume=state)
    except KeyboardInterrupt:
        where = run_dir / "model.pt"
        raise TrainingInterrupted(
            f"interrupted: the last good checkpoint is {where}; continue with "
            f"`flowrbc train ... --out {run_dir} --resume`" if where.exists() else "interrupted before the first epoch ended"
        ) from None
    model.load_state_dict(result.best_state)
    if rank != 0:
        return TrainResult(run_dir, {}, result.history, result.best_epoch)

    # read every cell: the decoder refitted on whole-patient embeddings
    decoder_fit = None
    if config.read == "all" and config.set_size is not None:
        from flowrbc.decoder_fit import fit_decoder

        decoder_fit = fit_decoder(model, data, lr=config.lr, weight_decay=config.weight_decay,
                                  covariate_dropout=config.covariate_dropout, seed=config.seed,
                                  precision=precision["predict"])
        predictor.set_size = None
        verdict = ("kept" if decoder_fit.kept else "not kept: the trained decoder reads every cell")
        say(f"best epoch {result.best_epoch} of {config.epochs}; decoder refitted on every cell of each patient, "
            f"validation loss lower by {decoder_fit.gain:.4f} ± {decoder_fit.gain_se:.4f}, {verdict} "
            f"({decoder_fit.wall_s:.0f} s); calibrating and testing")
    else:
        say(f"best epoch {result.best_epoch} of {config.epochs}; calibrating and testing")

    # assess and save
    cohort_fits = fits.result()
    predictor.model = model.eval()
    metrics, arrays = assess.finish(predictor, data, cohort_fits, config.coverage, cohort, fresh, reference)
    metrics.update(best_epoch=result.best_epoch, epochs=config.epochs, cohort=cohort.source, targets=list(data.specs),
                   cells_per_patient=int(np.median(np.diff(cohort.offsets))),
                   n={k: len(v) for k, v in data.split.items()}, wall_time_s=time.perf_counter() - t_start,
                   device=str(device), world_size=world, precision=precision,
                   decoder_fit=None if decoder_fit is None else decoder_fit.to_dict())
    index = cohort_fits.index
    save_checkpoint(run_dir / "model.pt", dict(
        meta, state_dict=cpu_state(model),  # the decoder as refitted
        complete=True, best_epoch=result.best_epoch, read_size=predictor.set_size,
        calibration=predictor.calibration, feature_ranges=cohort_fits.ranges, moments=cohort_fits.moments,
        healthy_reference=cohort_fits.healthy, metrics=_finite(metrics.get("test", {})),
        explain_reference=_reference_payload(cohort_fits.reference_cells),
        index_models=None if index is None else index.to_state()))
    _write_reports(run_dir, metrics, result.history, arrays if plots else None)
    update_latest(run_dir)
    return TrainResult(run_dir, metrics, result.history, result.best_epoch, arrays.get("samples"))


def _versions() -> dict[str, str]:
    import platform

    import numpy as np

    import flowrbc

    return {"flowrbc": flowrbc.__version__, "torch": str(torch.__version__), "numpy": np.__version__,
            "python": platform.python_version()}


LEAN_MIN_DEPTH = 8  # blocks from which a set-norm model trains lean by default in float32 on a CPU


def lean_by_default(model_config, device: torch.device, precision: str) -> bool:
    """``ModelConfig.lean`` when not asked: on for a model of ``LEAN_MIN_DEPTH`` or more set-norm
    blocks trained in float32 on a CPU. Measured there (AMD EPYC, 2 threads, B 64, N 1,000,
    ``benchmarks/speed.py``): Deep Sets++ 25 14.7 -> 14.4 sets/s, 4.73 -> 2.63 GiB; Set
    Transformer++ 8 11.3 -> 14.3 sets/s, 6.11 -> 5.25 GiB (since the attention through the few
    side, 2.4-2.6 GiB with lean on). Under bf16 the recomputation cost
    20-30 % of the speed (``flowrbc.models.norms.norm_linear``), so it stays off there."""
    return (device.type == "cpu" and precision == "fp32" and model_config.norm == "set"
            and model_config.depth >= LEAN_MIN_DEPTH)


def _reference_payload(ref: dict | None) -> dict | None:
    """The healthy cells of ``flowrbc explain`` as the checkpoint stores them (a tensor)."""
    return None if ref is None else {"cells": torch.from_numpy(ref["cells"]), "selection": ref["selection"]}


def _finite(obj):
    """JSON without NaN/inf: non-finite floats as strings."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _write_reports(run_dir: Path, metrics: dict, history: list[dict], arrays: dict | None) -> None:
    from flowrbc.checkpoint import atomic_write_text

    atomic_write_text(run_dir / "metrics.json", json.dumps(_finite(dict(metrics, history=history)), indent=2) + "\n")
    if arrays is None:
        return
    try:
        from flowrbc import plots
    except ImportError:  # matplotlib missing: metrics are written, plots skipped
        return
    plots.learning_curves(history, run_dir / "learning_curves.png")
    if "hematocrit" in arrays:
        y, p, q = arrays["hematocrit"]
        plots.predicted_vs_true(y, p, q, run_dir / "hematocrit_pred_vs_true.png")
    if "anemia" in arrays:
        y, prob = arrays["anemia"]
        plots.reliability_diagram(y, prob, run_dir / "anemia_reliability.png")
