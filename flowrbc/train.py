"""Cohort training (``train_cohort``), built on the one loop in ``flowrbc.fit``.

Run commands::

    flowrbc train                                   # built-in synthetic cohort, CPU or GPU
    flowrbc train cohort.h5ad --model deepsets++ --depth 50 --target hematocrit --target anemia
    torchrun --nproc_per_node 4 -m flowrbc.train cohort.h5ad --epochs 100   # data parallel
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable, Sequence

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
    draws: int = 10  # resampled sets averaged per sample at test/prediction time
    val_draws: int = 1  # fixed draws per validation sample for checkpoint selection
    threads: int | None = 1  # CPU threads; small set models run faster on one (measured: on a
    # busy 2-core CPU, 2 threads were 40x slower than 1); None: torch's default

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["targets"] = list(self.targets)
        d["milestones"] = list(self.milestones)
        d["covariates"] = None if self.covariates is None else list(self.covariates)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
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

        from flowrbc.predict import FeatureScaler

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
        self._moments = None

    def moment_features(self):
        """Moment features of every sample ``(F (S, n_features), names)``, computed once:
        the moment baseline and the QC reference share them."""
        if self._moments is None:
            from flowrbc.metrics import moment_features

            self._moments = moment_features(self.raw[:, 0], self.raw[:, 1], self.offsets_np)
        return self._moments

    def covariates_of(self, idx: torch.Tensor) -> torch.Tensor | None:
        """Encoded covariates (B, k) of samples ``idx``; None for a model without them."""
        return self.cov[idx] if self.cov.shape[1] else None

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


def _qc_reference(data: _CohortData) -> tuple[dict, dict]:
    """Training ranges of the per-cell features and moment-feature statistics, for QC."""
    import numpy as np

    sub = data.raw[data.train_rows]
    ranges = {
        role: {"p001": float(np.percentile(sub[:, j], 0.1)), "p999": float(np.percentile(sub[:, j], 99.9)),
               "min": float(sub[:, j].min()), "max": float(sub[:, j].max())}
        for j, (role, _) in enumerate(data.channels)
    }
    F, names = data.moment_features()
    F = F[data.split["train"]]  # per-sample features: the same as from the training cells alone
    moments = {"names": names, "mean": F.mean(0).tolist(), "sd": F.std(0).tolist(),
               "min": F.min(0).tolist(), "max": F.max(0).tolist()}
    return ranges, moments


def _oracle(samples, test_idx) -> dict[str, dict[str, float]]:
    """The generator's oracle on the test split (synthetic cohorts only): its best prediction
    given the patient's sex and every latent parameter the cells reveal (a lower bound; the
    cells alone do not reveal sex)."""
    import numpy as np

    out: dict[str, dict[str, float]] = {}
    if {"oracle_hematocrit", "oracle_hematocrit_sd", "hematocrit"} <= set(samples.columns):
        t = samples.iloc[test_idx]
        err = t["hematocrit"].to_numpy(float) - t["oracle_hematocrit"].to_numpy(float)
        sd = t["oracle_hematocrit_sd"].to_numpy(float)
        out["hematocrit"] = {"mse": float(np.mean(sd**2)), "mse_realized": float(np.mean(err**2)),
                             "mae_realized": float(np.mean(np.abs(err)))}
    whole = samples.attrs.get("oracle") or {}
    if "anemia_accuracy" in whole:
        out["anemia"] = {"accuracy": float(whole["anemia_accuracy"]), "scope": "whole cohort"}
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
) -> TrainResult:
    """Train a set model on ``cohort`` (flowrbc.io.cohort.Cohort) and write the run.

    Validation chooses the weights (once per epoch, fixed draws); then the validation split
    fits the calibration (conformal hematocrit interval, anemia temperature), and the test
    split is evaluated once, beside the moment-feature baseline and (synthetic cohorts) the
    generator's oracle. ``out_dir`` receives model.pt, last.pt (for ``resume``),
    metrics.json and plots; ``runs/latest`` points at it. Under torchrun every rank trains on
    its own draws and only rank 0 writes.
    """
    threads = torch.get_num_threads()
    try:
        if config.threads and resolve_device(config.device).type == "cpu":
            torch.set_num_threads(config.threads)
        return _train_cohort(cohort, config, out_dir, resume=resume, progress=progress,
                             on_epoch_end=on_epoch_end, log=log, plots=plots)
    finally:
        torch.set_num_threads(threads)


def _train_cohort(cohort, config: TrainConfig, out_dir, *, resume, progress, on_epoch_end, log, plots) -> TrainResult:
    from pathlib import Path

    from flowrbc.checkpoint import load_resume_state, save_checkpoint, save_resume_state, update_latest
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
                               covariates=len(data.covariates.names), outputs={name: 1 for name in data.specs})
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
            cov = data.covariates_of(idx)
            yield x, None if cov is None else covariate_dropout(cov, config.covariate_dropout, generator), idx

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
                _, parts = data.loss(m(draw_sets_(data, idx, config.cells, g), covariates=data.covariates_of(idx)), idx)
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
    metrics, calibration, arrays = _finish(model, data, config, cohort)
    ranges, moments = _qc_reference(data)
    metrics.update(best_epoch=result.best_epoch, epochs=config.epochs, cohort=cohort.source,
                   n={k: int(len(v)) for k, v in data.split.items()},
                   wall_time_s=time.perf_counter() - t_start, device=str(device), world_size=world)
    save_checkpoint(run_dir / "model.pt", dict(meta, state_dict=result.best_state, complete=True,
                                               best_epoch=result.best_epoch, calibration=calibration,
                                               feature_ranges=ranges, moments=moments,
                                               metrics=_finite(metrics["test"])))
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
    from flowrbc.predict import draw_sets

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


_UNKNOWN = "|covariates_unknown"


class _AlsoUnknown(torch.nn.Module):
    """``model``'s heads with the given covariates and, as ``<head>|covariates_unknown``,
    with every covariate unknown, both decoded from one encoder pass (the encoder never
    sees covariates): the same draws and outputs as two separate predictions, half the work."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, covariates: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.model.embed(x)  # (B, D)
        unknown = self.model.decode(z, None)
        return {**self.model.decode(z, covariates), **{k + _UNKNOWN: v for k, v in unknown.items()}}


def _finish(model, data: _CohortData, config: TrainConfig, cohort):
    """Calibrate on validation, evaluate model / baseline / oracle on test.

    With covariates the model is also calibrated and tested with every covariate unknown
    (``calibration[target]["covariates_unknown"]``, ``test["model_covariates_unknown"]``):
    prediction uses that calibration when a request lacks them."""
    import numpy as np

    from flowrbc.predict import predict_sets

    val, test = data.split["val"], data.split["test"]
    kw = dict(cells=config.cells, draws=config.draws, seed=config.seed + 2, batch_size=config.batch_size)
    has_cov = len(data.covariates.names) > 0
    net, specs = model, data.specs
    if has_cov:  # one encoder pass gives both: see _AlsoUnknown
        net, specs = _AlsoUnknown(model), {**specs, **{k + _UNKNOWN: v for k, v in specs.items()}}

    def run(idx):
        cov = data.cov[torch.as_tensor(idx, device=data.cov.device)] if has_cov else None
        return predict_sets(net, data.X, data.offsets, idx, specs, covariates=cov, **kw)

    pv, pt = run(val), run(test) if len(test) else None
    calibration, test_metrics, arrays = _calibrate_and_test(data, config, pv, pt)
    test_metrics = {"model": test_metrics, "baseline": {}, "oracle": {}}
    if has_cov:
        def unknown(p):
            return None if p is None else {k: p[k + _UNKNOWN] for k in data.specs}

        cal_u, test_u, _ = _calibrate_and_test(data, config, unknown(pv), unknown(pt))
        for name, cal in cal_u.items():
            calibration[name]["covariates_unknown"] = cal
        test_metrics["model_covariates_unknown"] = test_u
    if len(test):
        from flowrbc.metrics import classification_metrics, fit_moment_baseline, regression_metrics

        F, names = data.moment_features()
        F = np.concatenate([F, data.cov_raw], axis=1)  # the same covariates, NaN = unknown
        names = names + [f"covariate_{n}" for n in data.covariates.names]
        train_mask = np.isin(np.arange(len(F)), data.split["train"])
        val_mask = np.isin(np.arange(len(F)), val)
        baseline = fit_moment_baseline(F, data.truth, train_mask, val_mask, names, seed=config.seed)
        pb = baseline.predict(F[test])
        for name, spec in data.specs.items():
            yt = data.truth[name][test]
            ok = np.isfinite(yt)
            if spec["kind"] == "regression":
                test_metrics["baseline"][name] = regression_metrics(yt[ok], pb[name][ok])
            else:
                test_metrics["baseline"][name] = classification_metrics(yt[ok], pb[name][ok])
        test_metrics["oracle"] = _oracle(cohort.samples, test)
    return {"test": test_metrics, "calibration": calibration}, calibration, arrays


def _calibrate_and_test(data: _CohortData, config: TrainConfig, pv: dict, pt: dict | None):
    """Validation predictions ``pv`` -> calibration; test predictions ``pt`` -> metrics."""
    import numpy as np

    from flowrbc.calibration import calibrated_probability, fit_conformal, fit_temperature, interval_coverage
    from flowrbc.metrics import classification_metrics, regression_metrics

    val, test = data.split["val"], data.split["test"]
    calibration: dict[str, dict] = {}
    metrics: dict[str, dict] = {}
    arrays: dict[str, Any] = {}
    for name, spec in data.specs.items():
        yv, yt = data.truth[name][val], data.truth[name][test]
        okv, okt = np.isfinite(yv), np.isfinite(yt)
        if spec["kind"] == "regression":
            cal = fit_conformal(pv[name][okv], yv[okv], config.coverage)
            residuals = np.sort(np.abs(pv[name][okv] - yv[okv]))
            calibration[name] = dict(cal.to_dict(), residuals=residuals.tolist())  # any --coverage later
            if pt is not None and okt.any():
                m = regression_metrics(yt[okt], pt[name][okt])
                m["coverage"] = interval_coverage(pt[name][okt], yt[okt], cal)
                m["interval_halfwidth"] = cal.halfwidth
                metrics[name] = m
                arrays[name] = (yt[okt], pt[name][okt], cal.halfwidth)
        else:
            t = fit_temperature(pv[name][okv], yv[okv])
            calibration[name] = {"temperature": t, "n": int(okv.sum()), "threshold": 0.5}
            if pt is not None and okt.any():
                prob = calibrated_probability(pt[name][okt], t)
                m = classification_metrics(yt[okt], prob)
                m["ece_uncalibrated"] = classification_metrics(yt[okt], calibrated_probability(pt[name][okt], 1.0))["ece"]
                metrics[name] = m
                arrays[name] = (yt[okt], prob)
    return calibration, metrics, arrays


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


if __name__ == "__main__":  # torchrun --nproc_per_node N -m flowrbc.train [COHORT] [options]
    import sys

    from flowrbc.cli import app

    app(["train", *sys.argv[1:]])
