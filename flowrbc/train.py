"""Cohort training (``train_cohort``), built on the one loop in ``flowrbc.fit``.

Run commands::

    flowrbc train                                   # built-in synthetic cohort, CPU or GPU
    flowrbc train cohort.h5ad --model deepsets++ --depth 50 --target hematocrit --target anemia
    torchrun --nproc_per_node 4 -m flowrbc train cohort.h5ad --epochs 100   # data parallel
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from flowrbc.errors import FlowrbcError
from flowrbc.fit import FitConfig, FitProgress, FitState, fit, resolve_device


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
    lean: bool = False  # ModelConfig.lean: about half the activation memory, slower on CPU
    targets: tuple[str, ...] = ("hematocrit", "anemia")
    covariates: tuple[str, ...] | None = None  # None: sex and age where the cohort has them; (): none
    covariate_dropout: float = 0.2  # share of training sets whose each covariate reads "unknown"
    cells: int = 250  # per set, resampled every epoch; papers use 1000. At equal CPU time,
    # validation MSE 10.95 (250 x 50 epochs) vs 11.9 (500 x 25) and 11.3 (128 x 100)
    epochs: int = 50  # ~2.5 min on 2 CPU cores; 80 epochs did no better (best epoch 35)
    batch_size: int = 16  # sets per step (per process under torchrun); more steps per epoch
    lr: float = 1e-3
    weight_decay: float = 1e-4  # validation MSE 10.75 vs 10.95 at the papers' 5e-4 (built-in cohort)
    milestones: tuple[float, ...] = (0.5, 0.75, 0.9)  # lr ×0.1 at these fractions of the epochs;
    # the papers' (0.2, 0.6, 0.8) left most epochs at lr ≤ 1e-4: validation MSE 11.46 vs 10.95
    device: str = "auto"
    seed: int = 0
    coverage: float = 0.9  # nominal coverage of the hematocrit interval
    draws: int = 10  # most sets averaged per sample at test/prediction time (disjoint: flowrbc.inputs.prediction_sets)
    val_draws: int = 1  # fixed draws per validation sample for checkpoint selection
    hybrid: bool = True  # regression targets: the set model averaged with two index models
    # (flowrbc.hybrid); fresh hematocrit MSE 9.23 vs 10.00 for the set model alone (seed 779 cohort)
    index_inputs: bool = True  # the index features also as decoder inputs of the set model
    # (flowrbc.hybrid.IndexInputs): set model alone −0.21 / −0.23 ± 0.12 MSE, AUROC +0.004 (cohorts 777, 779)
    threads: int | None = 1  # CPU threads; small set models run faster on one (measured: on a
    # busy 2-core CPU, 2 threads were 40x slower than 1); None: torch's default

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["targets"] = list(self.targets)
        d["milestones"] = list(self.milestones)
        d["covariates"] = None if self.covariates is None else list(self.covariates)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = set(cls.__dataclass_fields__)
        tuples = ("targets", "milestones", "covariates")
        return cls(**{k: (tuple(v) if k in tuples and v is not None else v) for k, v in d.items() if k in known})


@dataclass
class TrainResult:
    run_dir: Any  # Path of the run (model.pt, metrics.json, plots)
    metrics: dict[str, Any]
    history: list[dict[str, float]]
    best_epoch: int


REGRESSION_TARGETS = ("hematocrit", "hemoglobin")
CLASSIFICATION_TARGETS = ("anemia",)


def _distributed() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; initialises the process group."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return dist.get_rank(), world


def _target_specs(samples, targets: Sequence[str], train_idx) -> dict[str, dict]:
    """Per target: kind and, for regression, the training mean/std used to standardise."""
    import numpy as np

    specs: dict[str, dict] = {}
    for name in targets:
        if name not in REGRESSION_TARGETS + CLASSIFICATION_TARGETS:
            raise FlowrbcError(
                f"--target {name!r}: not a known target (choose from "
                f"{', '.join(REGRESSION_TARGETS + CLASSIFICATION_TARGETS)})"
            )
        if name not in samples.columns:
            raise FlowrbcError(f"--target {name}: the cohort's sample table has no {name!r} column")
        y = samples[name].to_numpy(dtype=np.float64, na_value=np.nan)[train_idx]
        if not np.isfinite(y).any():
            raise FlowrbcError(f"--target {name}: no training sample has a value")
        if name in CLASSIFICATION_TARGETS:
            specs[name] = {"kind": "binary"}
        else:
            sd = float(np.nanstd(y))
            specs[name] = {"kind": "regression", "mean": float(np.nanmean(y)), "std": sd if sd > 0 else 1.0}
    return specs


def rows_of(offsets, idx):
    """Cell rows of samples ``idx`` (concatenated) and the offsets of that sub-matrix."""
    import numpy as np

    starts = offsets[idx]
    counts = offsets[np.asarray(idx) + 1] - starts
    sub = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    rows = np.repeat(starts - sub[:-1], counts) + np.arange(sub[-1])
    return rows, sub


def data_fingerprint(cohort) -> str:
    """SHA-256 over the sample ids, offsets and a strided sample of the cells."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    h.update("\n".join(map(str, cohort.samples.index)).encode())
    h.update(np.ascontiguousarray(cohort.offsets).tobytes())
    step = max(1, len(cohort.X) // 100_000)
    h.update(np.ascontiguousarray(cohort.X[::step]).tobytes())
    return h.hexdigest()[:16]


class _CohortData:
    """The cohort on the device: scaled cells, offsets, targets (standardised) and masks."""

    def __init__(self, cohort, config: TrainConfig, device: torch.device):
        import numpy as np

        from flowrbc.inputs import FeatureScaler

        self.roles = ("volume", "hemoglobin")
        cols = cohort.role_columns(self.roles)
        self.channels = [[r, cohort.roles[r]] for r in self.roles]
        samples = cohort.samples
        if "split" not in samples.columns:
            raise FlowrbcError(f"cohort {cohort.source}: no 'split' column in the sample table")
        n_cells = np.diff(cohort.offsets)
        split = samples["split"].astype(str).to_numpy()
        usable = n_cells > 0
        self.split = {s: np.flatnonzero((split == s) & usable) for s in ("train", "val", "test")}
        for s in ("train", "val"):
            if len(self.split[s]) == 0:
                raise FlowrbcError(f"cohort {cohort.source}: the {s} split is empty")
        self.specs = _target_specs(samples, config.targets, self.split["train"])
        from flowrbc.covariates import CovariateEncoder, resolve_names

        self.covariates = CovariateEncoder.fit(samples, resolve_names(samples, config.covariates), self.split["train"])
        self.cov_raw = self.covariates.raw(samples)  # (S, k) NaN = unknown: the baseline's columns
        self.cov = torch.from_numpy(self.covariates.encode_raw(self.cov_raw)).to(device)  # (S, k) 0 = unknown
        raw = cohort.X[:, cols]  # (n_cells, 2) in role order
        train_rows, _ = rows_of(cohort.offsets, self.split["train"][:: max(1, len(self.split["train"]) // 500)])
        self.scaler = FeatureScaler.fit(raw[train_rows], log=[True, True])
        self.raw, self.offsets_np = raw, cohort.offsets
        self.X = torch.from_numpy(self.scaler.transform(raw)).to(device)  # (n_cells, 2)
        self.offsets = torch.from_numpy(np.ascontiguousarray(cohort.offsets)).to(device)
        self.y, self.mask, self.truth = {}, {}, {}
        for name, spec in self.specs.items():
            y = samples[name].to_numpy(dtype=np.float64, na_value=np.nan)
            self.truth[name] = y
            ok = np.isfinite(y)
            z = (y - spec["mean"]) / spec["std"] if spec["kind"] == "regression" else y
            self.y[name] = torch.tensor(np.where(ok, z, 0.0), dtype=torch.float32, device=device)
            self.mask[name] = torch.tensor(ok, dtype=torch.float32, device=device)
        self.train_rows = train_rows
        self._inputs: _Inputs | None = None  # built on first use (``inputs``)
        self.index_inputs = None  # flowrbc.hybrid.IndexInputs when the decoder reads the index features
        self.side = None  # (S, F) their encoding
        if config.index_inputs:
            from flowrbc.hybrid import IndexInputs

            F, names = self.inputs.index_features()
            self.index_inputs = IndexInputs.fit(F, names, self.split["train"])
            self.side = torch.from_numpy(self.index_inputs.encode(F)).to(device)
            self.inputs.side = self.side  # after: the encoding needs the inputs' own index features

    @property
    def inputs(self) -> _Inputs:
        """This cohort as model and baseline inputs (moment features computed once, then kept)."""
        if self._inputs is None:
            self._inputs = _Inputs.of(self)
        return self._inputs

    @property
    def decoder_width(self) -> int:
        """Inputs the decoder reads beside the embedding: covariates, then index inputs."""
        return self.cov.shape[1] + (0 if self.side is None else self.side.shape[1])

    def decoder_inputs(self, idx: torch.Tensor, dropout: float = 0.0,
                       generator: torch.Generator | None = None) -> torch.Tensor | None:
        """(B, k + F) decoder inputs of samples ``idx`` (``flowrbc.inputs.decoder_inputs``);
        ``dropout``: each covariate reads "unknown" with this probability (the index inputs are
        always known). None for a model without any."""
        from flowrbc.inputs import decoder_inputs

        cov = self.cov[idx] if self.cov.shape[1] else None
        if cov is not None and dropout > 0:
            cov = covariate_dropout(cov, dropout, generator)
        return decoder_inputs(cov, None if self.side is None else self.side[idx], self.cov.shape[1])

    def loss(self, out: dict[str, torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over targets of the masked mean loss: MSE on standardised values, BCE on logits."""
        parts = {}
        for name, spec in self.specs.items():
            pred = out[name].float().squeeze(-1)  # (B,)
            y, m = self.y[name][idx], self.mask[name][idx]
            if spec["kind"] == "regression":
                per = (pred - y) ** 2
            else:
                per = torch.nn.functional.binary_cross_entropy_with_logits(pred, y, reduction="none")
            parts[name] = (per * m).sum() / m.sum().clamp(min=1.0)
        return sum(parts.values()), parts


def _qc_reference(data: _CohortData, features) -> tuple[dict, dict]:
    """Training ranges of the per-cell features and moment-feature statistics, for QC.
    ``features``: (moment features of every sample (S, F), names), as ``_Inputs`` computed them."""
    import numpy as np

    sub = data.raw[data.train_rows]
    ranges = {
        role: {"p001": float(np.percentile(sub[:, j], 0.1)), "p999": float(np.percentile(sub[:, j], 99.9)),
               "min": float(sub[:, j].min()), "max": float(sub[:, j].max())}
        for j, (role, _) in enumerate(data.channels)
    }
    F, names = features
    F = F[data.split["train"]]
    moments = {"names": names, "mean": F.mean(0).tolist(), "sd": F.std(0).tolist(),
               "min": F.min(0).tolist(), "max": F.max(0).tolist()}
    return ranges, moments


def _bound(samples, idx) -> dict[str, dict[str, float]]:
    """The cell bound on the samples ``idx`` (synthetic cohorts only, ``flowrbc.bound``): the
    best prediction from the patient's cell population (infinitely many cells), sex and age.
    ``mse`` is its expected error (mean posterior variance), ``mse_realized`` its error on
    these patients; for anemia the Bayes probability's accuracy, AUROC and Brier score."""
    import numpy as np

    from flowrbc.metrics import classification_metrics, regression_metrics

    out: dict[str, dict[str, float]] = {}
    t = samples.iloc[idx]
    if {"bound_hematocrit", "bound_hematocrit_sd", "hematocrit"} <= set(t.columns):
        m = regression_metrics(t["hematocrit"].to_numpy(float), t["bound_hematocrit"].to_numpy(float))
        out["hematocrit"] = {"mse": float(np.mean(t["bound_hematocrit_sd"].to_numpy(float) ** 2)),
                             "mse_realized": m["mse"], "mae": m["mae"], "r2": m["r2"]}
    if {"bound_anemia_probability", "anemia"} <= set(t.columns):
        p = t["bound_anemia_probability"].to_numpy(float)
        out["anemia"] = dict(classification_metrics(t["anemia"].to_numpy(float), p),
                             accuracy_expected=float(np.mean(np.maximum(p, 1 - p))))
    return out


def default_run_dir(config: TrainConfig, root: str = "runs"):
    from pathlib import Path

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{stamp}-{config.model.replace('+', 'p')}"


def train_cohort(
    cohort,
    config: TrainConfig,
    out_dir=None,
    *,
    resume: bool = False,
    progress: Callable[[FitProgress], None] | None = None,
    on_epoch_end: Callable[[FitState], None] | None = None,
    log: Callable[[str], None] | None = None,
    plots: bool = True,
    fresh=None,
    reference: Callable[[], dict] | None = None,
) -> TrainResult:
    """Train a set model on ``cohort`` (flowrbc.io.cohort.Cohort) and write the run.

    ``fresh``: an independent cohort (same channels) that is scored once at the end, never
    used for any choice (``metrics["fresh"]``); for the built-in cohort, the CLI passes a
    fresh synthetic cohort of another seed. ``reference()``: another predictor's predictions on
    the fresh samples (target -> (n_fresh,), in its units or probabilities), scored beside the
    model as ``metrics["fresh"]["reference"]``; for the built-in cohort, the CLI passes the
    model given the exact population parameters (``flowrbc.bound.exact_population_reference``).

    Validation chooses the weights (once per epoch, fixed draws); then the validation split
    fits the calibration (conformal hematocrit interval, anemia temperature), and the test
    split is evaluated once, beside the moment-feature baseline and (synthetic cohorts) the
    cell bound. ``out_dir`` receives model.pt, last.pt (for ``resume``),
    metrics.json and plots; ``runs/latest`` points at it. Under torchrun every rank trains on
    its own draws and only rank 0 writes.
    """
    threads = torch.get_num_threads()
    try:
        if config.threads and resolve_device(config.device).type == "cpu":
            torch.set_num_threads(config.threads)
        return _train_cohort(cohort, config, out_dir, resume=resume, progress=progress,
                             on_epoch_end=on_epoch_end, log=log, plots=plots, fresh=fresh, reference=reference)
    finally:
        torch.set_num_threads(threads)


def _train_cohort(cohort, config: TrainConfig, out_dir, *, resume, progress, on_epoch_end, log, plots,
                  fresh, reference=None) -> TrainResult:
    from pathlib import Path

    from flowrbc.checkpoint import (
        load_resume_state,
        save_checkpoint,
        save_resume_state,
        update_latest,
    )
    from flowrbc.models import ModelConfig, build_model

    t_start = time.perf_counter()
    say = log or (lambda msg: None)
    rank, world = _distributed()
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    for name, value in (("cells", config.cells), ("epochs", config.epochs), ("batch_size", config.batch_size),
                        ("draws", config.draws)):
        if value < 1:
            raise FlowrbcError(f"--{name.replace('_', '-')} {value}: must be at least 1")
    if not 0.0 <= config.covariate_dropout < 1.0:
        raise FlowrbcError(f"--covariate-dropout {config.covariate_dropout}: must be in [0, 1)")
    run_dir = Path(out_dir) if out_dir is not None else default_run_dir(config)
    state = None
    if resume:
        state = load_resume_state(run_dir / "last.pt")
        saved = TrainConfig.from_dict(state["train_config"])
        if saved != config:
            diff = [k for k in config.to_dict() if config.to_dict()[k] != saved.to_dict().get(k)]
            raise FlowrbcError(f"--resume {run_dir}: options differ from the interrupted run ({', '.join(diff)})")
    data = _CohortData(cohort, config, device)
    fingerprint = data_fingerprint(cohort)
    if state is not None and state["fingerprint"] != fingerprint:
        raise FlowrbcError(f"--resume {run_dir}: the cohort differs from the one the run started on")
    say(f"cohort {cohort.source}: " + ", ".join(f"{k} {len(v)}" for k, v in data.split.items())
        + f" samples; {config.cells} cells per set; covariates {', '.join(data.covariates.names) or 'none'}; "
        f"device {device}" + (f" × {world}" if world > 1 else ""))

    torch.manual_seed(config.seed)  # same initial weights on every rank
    model_config = ModelConfig(family=config.model, in_features=len(data.roles), depth=config.depth,
                               width=config.width, norm=config.norm, residual=config.residual,
                               inducing=config.inducing, lean=config.lean,
                               covariates=data.decoder_width, outputs={name: 1 for name in data.specs})
    model = build_model(model_config).to(device)
    net = model
    if world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    train_idx = torch.as_tensor(data.split["train"], device=device)
    steps = max(1, math.ceil(len(train_idx) / (config.batch_size * world)))

    def batches(epoch: int, generator: torch.Generator):
        perm = train_idx[torch.randperm(len(train_idx), generator=generator, device=device)]
        for step in range(steps):
            idx = perm[(step * config.batch_size) % len(perm):][: config.batch_size]
            x = draw_sets_(data, idx, config.cells, generator)
            yield x, data.decoder_inputs(idx, config.covariate_dropout, generator), idx

    def loss_fn(m, batch):
        x, cov, idx = batch
        return data.loss(m(x, covariates=cov), idx)[0]

    val_idx = torch.as_tensor(data.split["val"], device=device)

    def evaluate(m):
        g = torch.Generator(device=device)
        g.manual_seed(config.seed + 1_000_003)  # the same validation sets every epoch
        sums: dict[str, torch.Tensor] = {}
        for _ in range(config.val_draws):
            for lo in range(0, len(val_idx), config.batch_size):
                idx = val_idx[lo : lo + config.batch_size]
                _, parts = data.loss(m(draw_sets_(data, idx, config.cells, g), covariates=data.decoder_inputs(idx)), idx)
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v * len(idx)
        n = len(val_idx) * config.val_draws
        parts = {k: float(v) / n for k, v in sums.items()}
        out = {"score": sum(parts.values())}
        for name, value in parts.items():
            spec = data.specs[name]
            if spec["kind"] == "regression":
                out[f"val_{name}_rmse"] = math.sqrt(value) * spec["std"]
            else:
                out[f"val_{name}_bce"] = value
        return out

    meta = {
        "model_config": model_config.to_dict(),
        "train_config": config.to_dict(),
        "channels": data.channels,
        "scaler": data.scaler.to_dict(),
        "targets": data.specs,
        "covariates": data.covariates.to_dict(),
        "index_inputs": None if data.index_inputs is None else data.index_inputs.to_state(),
        "fingerprint": fingerprint,
        "cohort": cohort.source,
        "versions": _versions(),
    }

    def checkpoint_epoch(fs: FitState) -> None:
        if rank == 0:
            if fs.improved:
                save_checkpoint(run_dir / "model.pt", dict(meta, state_dict=fs.result.best_state,
                                                           complete=False, best_epoch=fs.result.best_epoch))
            save_resume_state(run_dir / "last.pt", dict(fs.resume_state(), train_config=config.to_dict(),
                                                        fingerprint=fingerprint))
            if fs.epoch == 1 or fs.improved:
                update_latest(run_dir)
        if on_epoch_end is not None:
            on_epoch_end(fs)

    fit_config = FitConfig(epochs=config.epochs, steps_per_epoch=steps, lr=config.lr,
                           weight_decay=config.weight_decay, milestones=tuple(config.milestones),
                           device=str(device), seed=config.seed + rank)
    # what the finishing step needs from the cohort alone fits on a second thread during the
    # epochs (one CPU thread trains by default; on a GPU the CPU waits)
    cohort_fits = _Background(lambda: _cohort_fits(data, config, cohort)) if rank == 0 else None
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
    say(f"best epoch {result.best_epoch} of {config.epochs}; calibrating and testing")
    fits = cohort_fits.result()
    metrics, calibration, arrays = _finish(model, data, config, cohort, fits, fresh, reference)
    index, (ranges, moments), healthy = fits.index, fits.qc, fits.healthy
    metrics.update(best_epoch=result.best_epoch, epochs=config.epochs, cohort=cohort.source,
                   n={k: len(v) for k, v in data.split.items()},
                   wall_time_s=time.perf_counter() - t_start, device=str(device), world_size=world)
    save_checkpoint(run_dir / "model.pt", dict(meta, state_dict=result.best_state, complete=True,
                                               best_epoch=result.best_epoch, calibration=calibration,
                                               feature_ranges=ranges, moments=moments, healthy_reference=healthy,
                                               metrics=_finite(metrics.get("test", {})),
                                               index_models=index.to_state() if index is not None else None))
    _write_reports(run_dir, metrics, result.history, arrays if plots else None)
    update_latest(run_dir)
    return TrainResult(run_dir, metrics, result.history, result.best_epoch)


def covariate_dropout(cov: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each covariate of each set reads "unknown" (0) with probability ``p``, so that the
    model learns to predict without it. cov (B, k) -> (B, k)."""
    if p <= 0 or cov.shape[1] == 0:
        return cov
    keep = torch.rand(cov.shape, generator=generator, device=cov.device) >= p  # (B, k)
    return cov * keep


def draw_sets_(data: _CohortData, idx: torch.Tensor, cells: int, generator: torch.Generator) -> torch.Tensor:
    from flowrbc.inputs import draw_sets

    return draw_sets(data.X, data.offsets, idx, cells, generator)


def _versions() -> dict[str, str]:
    import platform

    import numpy as np

    import flowrbc

    return {"flowrbc": flowrbc.__version__, "torch": str(torch.__version__), "numpy": np.__version__,
            "python": platform.python_version()}


def _finite(obj):
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    return obj


def _finish(model, data: _CohortData, config: TrainConfig, cohort, fits: _CohortFits, fresh=None, reference=None):
    """Calibrate the predictor (the set model blended with ``fits.index``, ``flowrbc.hybrid``)
    on validation; score the predictor, the set model alone, the moment baseline and
    (synthetic) the bound on test and on the ``fresh`` cohort (an independent cohort never
    used for any choice), each comparison with the baseline as a paired difference with its SE.

    With covariates the set model is also calibrated and tested with every covariate unknown
    (``calibration[target]["covariates_unknown"]``, ``test["model_covariates_unknown"]``):
    prediction uses it alone, with that calibration, when a request lacks them.
    -> (metrics, calibration, plot arrays)."""
    import numpy as np

    val, test = data.split["val"], data.split["test"]
    has_cov = len(data.covariates.names) > 0
    inputs = data.inputs
    index, baseline = fits.index, fits.baseline
    scored = [("test", inputs, test, cohort.samples)] if len(test) else []
    if fresh is not None:
        ext = _Inputs.external(data, fresh)
        scored.append(("fresh", ext, np.arange(ext.n), fresh.samples))
    val_known, val_unknown = inputs.predict(model, val, data.specs, config, with_unknown=has_cov)
    known = {key: src.predict(model, idx, data.specs, config, with_unknown=has_cov and key == "test")
             for key, src, idx, _ in scored}  # fresh: covariates known only

    def predictor(src: _Inputs, idx, pred: dict) -> dict:
        return pred if index is None else src.blend(index, idx, pred)

    calibration = _calibrate(data, config, predictor(inputs, val, val_known))
    metrics: dict[str, Any] = {"calibration": calibration, "predictor": "hybrid" if index else "set model",
                               "index_inputs": data.index_inputs is not None}
    arrays: dict[str, Any] = {}
    if has_cov:
        for name, cal in _calibrate(data, config, val_unknown).items():
            calibration[name]["covariates_unknown"] = cal
    for key, src, idx, samples in scored:
        pred, unknown = known[key]
        metrics[key] = _score(data, calibration, src, idx, predictor(src, idx, pred), baseline, samples)
        if key == "test":
            arrays = metrics[key].pop("_arrays")
        else:
            scored_fresh = metrics[key].pop("_arrays")
            metrics[key]["cohort"] = fresh.source
            if reference is not None:
                metrics[key]["reference"] = _against_reference(data, scored_fresh, src.truth, reference())
        if index is not None:
            alone = _score(data, calibration, src, idx, pred, baseline, None)
            metrics[key]["set_model"] = {"model": alone["model"], "paired": alone["paired"]}
        if unknown is not None:
            unknown = _score(data, calibration, src, idx, unknown, None, None, covariates_unknown=True)
            metrics[key]["model_covariates_unknown"] = unknown["model"]
    return metrics, calibration, arrays


class _Background:
    """``fn()`` on a daemon thread from construction; ``result()`` waits for it and re-raises
    its error. torch, numpy and scikit-learn release the GIL in their kernels, so the work
    overlaps what the calling thread computes. A daemon: an interrupted run exits without
    waiting for it."""

    def __init__(self, fn):
        import threading

        self._out: tuple = (None, None)

        def run():
            try:
                self._out = (fn(), None)
            except BaseException as err:  # handed to result()
                self._out = (None, err)

        self._thread = threading.Thread(target=run, name="flowrbc-fit", daemon=True)
        self._thread.start()

    def result(self):
        self._thread.join()
        value, err = self._out
        if err is not None:
            raise err
        return value


@dataclass
class _CohortFits:
    """What the finishing step needs that reads the training cohort only, not the set model:
    the index members (None without ``hybrid``), the moment baseline, the QC reference
    (feature ranges, moment statistics) and the report's healthy reference."""

    index: Any
    baseline: Any
    qc: tuple[dict, dict]
    healthy: dict | None


def _cohort_fits(data: _CohortData, config: TrainConfig, cohort) -> _CohortFits:
    from flowrbc.report.reference import healthy_reference  # the report's healthy contour and bands

    inputs = data.inputs
    index = _fit_index(data, inputs, config) if config.hybrid else None
    return _CohortFits(index, _fit_baseline(data, inputs, config), _qc_reference(data, inputs.moment_features()),
                       healthy_reference(data.raw, data.offsets_np, cohort.samples, data.split["train"]))


def _fit_index(data: _CohortData, inputs: _Inputs, config: TrainConfig):
    """The index members of the predictor (``flowrbc.hybrid``), fitted on train, stopped on val."""
    from flowrbc.hybrid import fit_index_models

    F, names = inputs.index_features()
    return fit_index_models(F, names, inputs.cov_raw, data.covariates.encode_raw(inputs.cov_raw), data.truth,
                            data.specs, data.split["train"], data.split["val"], seed=config.seed)


@dataclass
class _Inputs:
    """What the model and the baseline read for a set of samples: scaled cells on the device
    with offsets, encoded covariates (model), moment features + raw covariates (baseline)
    and the labels. ``of`` wraps the training cohort; ``external`` scales another cohort
    with the training run's scaler and covariate statistics."""

    X: torch.Tensor  # (n_cells, C) scaled
    offsets: torch.Tensor  # (n + 1,)
    cov: torch.Tensor  # (n, k) encoded, 0 = unknown
    raw: Any  # (n_cells, C) unscaled, for the moment features
    offsets_np: Any
    cov_raw: Any  # (n, k) NaN = unknown
    truth: dict[str, Any]
    side: Any = None  # (n, F) the set model's index inputs (encoded); None: a model without them
    _features: Any = None  # the baseline's features, computed once
    _index_features: Any = None  # the index members' features, computed once

    @property
    def n(self) -> int:
        return len(self.offsets_np) - 1

    @classmethod
    def of(cls, data: _CohortData) -> _Inputs:
        return cls(data.X, data.offsets, data.cov, data.raw, data.offsets_np, data.cov_raw, data.truth)

    @classmethod
    def external(cls, data: _CohortData, cohort) -> _Inputs:
        import numpy as np

        raw = cohort.X[:, cohort.role_columns(data.roles)]
        device = data.X.device
        cov_raw = data.covariates.raw(cohort.samples)
        truth = {name: cohort.samples[name].to_numpy(dtype=np.float64, na_value=np.nan) for name in data.specs}
        out = cls(torch.from_numpy(data.scaler.transform(raw)).to(device),
                  torch.from_numpy(np.ascontiguousarray(cohort.offsets)).to(device),
                  torch.from_numpy(data.covariates.encode_raw(cov_raw)).to(device),
                  raw, cohort.offsets, cov_raw, truth)
        if data.index_inputs is not None:
            out.side = torch.from_numpy(data.index_inputs.encode(out.index_features()[0])).to(device)
        return out

    def predict(self, model, idx, specs, config: TrainConfig, with_unknown: bool) -> tuple[dict, dict | None]:
        """Set-model predictions on samples ``idx`` with their covariates and, ``with_unknown``,
        with every covariate unknown (same draws, one encoder pass) -> (known, unknown or None)."""
        from flowrbc.inputs import decoder_inputs, predict_sets_each

        rows = torch.as_tensor(idx, device=self.cov.device)
        k = self.cov.shape[1]
        side = None if self.side is None else self.side[rows]
        entries = [decoder_inputs(self.cov[rows] if k else None, side, k)]
        if with_unknown:
            entries.append(decoder_inputs(None, side, k))  # every covariate unknown, the index inputs kept
        out = predict_sets_each(model, self.X, self.offsets, idx, specs, entries,
                                cells=config.cells, draws=config.draws, seed=config.seed + 2)
        return out[0], out[1] if with_unknown else None

    def moment_features(self):
        """(moment features of every sample (n, F), names), computed once."""
        from flowrbc.metrics import moment_features

        if self._features is None:
            self._features = moment_features(self.raw[:, 0], self.raw[:, 1], self.offsets_np)
        return self._features

    def index_features(self):
        """(moment + shape features (n, F), names): what the index members read, computed once."""
        from flowrbc.hybrid import index_features

        if self._index_features is None:
            self._index_features = index_features(self.raw[:, 0], self.raw[:, 1], self.offsets_np,
                                                  self.moment_features())
        return self._index_features

    def baseline_features(self):
        """Moment features + raw covariates (NaN = unknown): the baseline's columns."""
        import numpy as np

        F, names = self.moment_features()
        return np.concatenate([F, self.cov_raw], axis=1), names

    def blend(self, index, idx, pred: dict) -> dict:
        """The set model's ``pred`` on samples ``idx`` blended with the index members."""
        F, _ = self.index_features()
        cov = self.cov[torch.as_tensor(idx, device=self.cov.device)].cpu().numpy()
        return index.blend(pred, F[idx], self.cov_raw[idx], cov)


def _fit_baseline(data: _CohortData, inputs: _Inputs, config: TrainConfig):
    """Gradient boosting on the moment features + covariates, fitted on train, chosen on val."""
    import numpy as np

    from flowrbc.metrics import fit_moment_baseline

    F, names = inputs.baseline_features()
    names = names + [f"covariate_{n}" for n in data.covariates.names]
    rows = np.arange(len(F))
    return fit_moment_baseline(F, data.truth, np.isin(rows, data.split["train"]), np.isin(rows, data.split["val"]),
                               names, seed=config.seed)


def _calibrate(data: _CohortData, config: TrainConfig, pv: dict) -> dict[str, dict]:
    """Validation predictions ``pv`` -> conformal interval (regression), temperature (binary)."""
    import numpy as np

    from flowrbc.calibration import fit_conformal, fit_temperature

    val = data.split["val"]
    calibration: dict[str, dict] = {}
    for name, spec in data.specs.items():
        yv = data.truth[name][val]
        ok = np.isfinite(yv)
        if spec["kind"] == "regression":
            cal = fit_conformal(pv[name][ok], yv[ok], config.coverage)
            residuals = np.sort(np.abs(pv[name][ok] - yv[ok]))
            calibration[name] = dict(cal.to_dict(), residuals=residuals.tolist())  # any --coverage later
        else:
            calibration[name] = {"temperature": fit_temperature(pv[name][ok], yv[ok]), "n": int(ok.sum()),
                                 "threshold": 0.5}
    return calibration


def _score(data: _CohortData, calibration: dict, inputs: _Inputs, idx, pred: dict,
           baseline, samples, covariates_unknown: bool = False) -> dict[str, Any]:
    """Model (calibrated) against the baseline and the bound on samples ``idx`` of ``inputs``:
    ``{"n", "model", "baseline", "bound", "paired": {target: {metric: {diff, se, n}}}}``
    (paired diff = model − baseline per patient), plus ``_arrays`` for the plots."""
    import numpy as np

    from flowrbc.calibration import ConformalInterval, calibrated_probability, interval_coverage
    from flowrbc.evaluation import compare, standard_errors
    from flowrbc.metrics import classification_metrics, regression_metrics

    out: dict[str, Any] = {"n": len(idx), "model": {}, "baseline": {}, "bound": {}, "paired": {}, "_arrays": {}}
    pb = None
    if baseline is not None:
        F, _ = inputs.baseline_features()
        pb = baseline.predict(F[idx])
    for name, spec in data.specs.items():
        cal = calibration[name].get("covariates_unknown", calibration[name]) if covariates_unknown else calibration[name]
        y = inputs.truth[name][idx]
        ok = np.isfinite(y)
        if not ok.any():
            continue
        if spec["kind"] == "regression":
            value = pred[name]
            interval = ConformalInterval.from_dict(cal)
            m = regression_metrics(y[ok], value[ok])
            m["coverage"] = interval_coverage(value[ok], y[ok], interval)
            m["interval_halfwidth"] = interval.halfwidth
            out["_arrays"][name] = (y[ok], value[ok], interval.halfwidth)
            base = regression_metrics if pb is not None else None
        else:
            value = calibrated_probability(pred[name], cal["temperature"])
            m = classification_metrics(y[ok], value[ok])
            m["ece_uncalibrated"] = classification_metrics(y[ok], calibrated_probability(pred[name][ok], 1.0))["ece"]
            out["_arrays"][name] = (y[ok], value[ok])
            base = classification_metrics if pb is not None else None
        out["model"][name] = dict(m, **standard_errors(spec["kind"], y[ok], value[ok]))
        if base is not None:
            out["baseline"][name] = dict(base(y[ok], pb[name][ok]),
                                         **standard_errors(spec["kind"], y[ok], pb[name][ok]))
            out["paired"][name] = compare(spec["kind"], y[ok], value[ok], pb[name][ok])
    if samples is not None:
        out["bound"] = _bound(samples, idx)
    return out


def _against_reference(data: _CohortData, scored: dict, truth: dict, ref: dict) -> dict:
    """A reference predictor ``ref`` (target -> (n,)) on the patients the model was ``scored``
    on (``_score``'s arrays): ``{"model": {target: metrics + SE}, "paired": {target: model −
    reference}}``."""
    import numpy as np

    from flowrbc.evaluation import compare, standard_errors
    from flowrbc.metrics import classification_metrics, regression_metrics

    out: dict[str, Any] = {"model": {}, "paired": {}}
    for name, spec in data.specs.items():
        if name not in ref or name not in scored:
            continue
        ok = np.isfinite(truth[name])
        y, value, r = scored[name][0], scored[name][1], np.asarray(ref[name], np.float64)[ok]
        metric = regression_metrics if spec["kind"] == "regression" else classification_metrics
        out["model"][name] = dict(metric(y, r), **standard_errors(spec["kind"], y, r))
        out["paired"][name] = compare(spec["kind"], y, value, r)
    return out


def _write_reports(run_dir, metrics: dict, history: list[dict], arrays: dict | None) -> None:
    import json

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
