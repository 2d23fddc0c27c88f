"""A cohort made ready for training: splits, targets, and the predictor's input parts fitted on
the training split (cell scaler, covariate encoder, index-feature encoder), with the whole
cohort prepared once through them (``flowrbc.predictor.Predictor.prepare``)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from flowrbc.errors import FlowrbcError
from flowrbc.io.cohort import SPLITS
from flowrbc.predictor import Predictor, Prepared, rows_of

REGRESSION_TARGETS = ("hematocrit", "hemoglobin")
CLASSIFICATION_TARGETS = ("anemia",)
DEFAULT_TARGETS = ("hematocrit", "anemia")  # what flowrbc predicts; hemoglobin on request
ROLES = ("volume", "hemoglobin")
SCALER_SAMPLES = 500  # training samples whose cells fit the per-cell scaler (statistics, not every cell)


def cohort_targets(samples) -> tuple[str, ...]:
    """A cohort's default ``--target``: hematocrit and anemia where the sample table has values
    of them, else hemoglobin (a table with none of them is refused)."""
    def has(name: str) -> bool:
        return name in samples.columns and bool(samples[name].notna().any())

    names = tuple(n for n in DEFAULT_TARGETS if has(n)) or tuple(n for n in REGRESSION_TARGETS if has(n))
    if not names:
        raise FlowrbcError(f"the cohort's sample table has none of the targets "
                           f"{', '.join(REGRESSION_TARGETS + CLASSIFICATION_TARGETS)}")
    return names


def target_specs(samples, targets: Sequence[str], train_idx: np.ndarray) -> dict[str, dict]:
    """Per target: kind and, for regression, the training mean/std used to standardise."""
    specs: dict[str, dict] = {}
    for name in targets:
        if name not in REGRESSION_TARGETS + CLASSIFICATION_TARGETS:
            raise FlowrbcError(f"--target {name!r}: not a known target (choose from "
                               f"{', '.join(REGRESSION_TARGETS + CLASSIFICATION_TARGETS)})")
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


def cohort_splits(cohort) -> dict[str, np.ndarray]:
    """Sample indices of each split, samples without cells left out; train and val must exist."""
    if "split" not in cohort.samples.columns:
        raise FlowrbcError(f"cohort {cohort.source}: no 'split' column in the sample table")
    split = cohort.samples["split"].astype(str).to_numpy()
    usable = np.diff(cohort.offsets) > 0
    out = {s: np.flatnonzero((split == s) & usable) for s in SPLITS}
    for s in ("train", "val"):
        if len(out[s]) == 0:
            raise FlowrbcError(f"cohort {cohort.source}: the {s} split is empty")
    return out


def data_fingerprint(cohort) -> str:
    """SHA-256 over the sample ids, offsets and a strided sample of the cells."""
    h = hashlib.sha256()
    h.update("\n".join(map(str, cohort.samples.index)).encode())
    h.update(np.ascontiguousarray(cohort.offsets).tobytes())
    step = max(1, len(cohort.X) // 100_000)
    h.update(np.ascontiguousarray(cohort.X[::step]).tobytes())
    return h.hexdigest()[:16]


@dataclass
class TrainingData:
    """A training cohort through its predictor's inputs: ``prep`` (every sample), the splits,
    the targets as given (``truth``) and standardised on the device (``y``, ``mask``)."""

    predictor: Predictor  # the input parts; its model, index members and calibration come later
    prep: Prepared
    split: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]  # target -> (S,) float64, NaN = missing
    y: dict[str, torch.Tensor]  # target -> (S,) standardised (regression) or 0/1, 0 where missing
    mask: dict[str, torch.Tensor]  # target -> (S,) 1.0 where the target is known
    train_rows: np.ndarray  # cell rows of the samples the scaler and QC ranges were fitted on

    @classmethod
    def of(cls, cohort, *, targets: Sequence[str] | None, covariates: Sequence[str] | None, index_inputs: bool,
           set_size: int, device: torch.device) -> TrainingData:
        """Fit the input parts on the training split of ``cohort`` and prepare every sample.
        ``targets`` None: those the cohort has; ``covariates`` None: sex and age where present."""
        from flowrbc.covariates import CovariateEncoder, resolve_names
        from flowrbc.hybrid import IndexInputs
        from flowrbc.inputs import FeatureScaler

        split = cohort_splits(cohort)
        train = split["train"]
        samples = cohort.samples
        specs = target_specs(samples, targets if targets is not None else cohort_targets(samples), train)
        raw = cohort.X[:, cohort.role_columns(ROLES)]  # (n_cells, 2) in role order
        train_rows, _ = rows_of(cohort.offsets, train[:: max(1, len(train) // SCALER_SAMPLES)])
        predictor = Predictor(model=None, channels=[(r, cohort.roles[r]) for r in ROLES],
                              scaler=FeatureScaler.fit(raw[train_rows], log=[True] * len(ROLES)), targets=specs,
                              covariates=CovariateEncoder.fit(samples, resolve_names(samples, covariates), train),
                              set_size=set_size, device=device)
        prep = predictor.prepare(raw, cohort.offsets, predictor.covariates.raw(samples), features=True)
        if index_inputs:  # the encoder's statistics come from the training split's features
            predictor.index_inputs = IndexInputs.fit(prep.features, prep.feature_names, train)
            prep.encoded_features = torch.from_numpy(predictor.index_inputs.encode(prep.features)).to(device)
        truth, y, mask = {}, {}, {}
        for name, spec in specs.items():
            t = samples[name].to_numpy(dtype=np.float64, na_value=np.nan)
            ok = np.isfinite(t)
            z = (t - spec["mean"]) / spec["std"] if spec["kind"] == "regression" else t
            truth[name] = t
            y[name] = torch.tensor(np.where(ok, z, 0.0), dtype=torch.float32, device=device)
            mask[name] = torch.tensor(ok, dtype=torch.float32, device=device)
        return cls(predictor, prep, split, truth, y, mask, train_rows)

    @property
    def specs(self) -> dict[str, dict]:
        return self.predictor.targets

    @property
    def decoder_width(self) -> int:
        """Inputs the decoder reads beside the embedding: covariates, then index inputs."""
        encoded = self.prep.encoded_features
        return len(self.predictor.covariates.names) + (0 if encoded is None else encoded.shape[1])

    def draw(self, idx: torch.Tensor, cells: int | None,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A training set for each sample ``idx``: ``cells`` cells drawn with replacement, or with
        ``cells`` None as many as the sample has (a bootstrap of its cells: the set size and
        spread of the whole sample, a new draw every step), padded to the largest and masked.
        -> (x (B, N, C), mask (B, N) or None when no set is padded)."""
        from flowrbc.inputs import draw_sets

        X, offsets = self.prep.X, self.prep.offsets
        if cells is not None:
            return draw_sets(X, offsets, idx, cells, generator), None
        start = offsets[idx]  # (B,)
        n = offsets[idx + 1] - start  # (B,)
        N = int(n.max())
        u = torch.rand(len(idx), N, generator=generator, device=X.device)  # (B, N)
        rows = start[:, None] + torch.minimum((u * n[:, None]).long(), n[:, None] - 1)  # (B, N)
        mask = torch.arange(N, device=X.device)[None, :] < n[:, None]  # (B, N)
        return X[rows], (None if bool(mask.all()) else mask)

    def decoder_inputs(self, idx: torch.Tensor, dropout: float = 0.0,
                       generator: torch.Generator | None = None) -> torch.Tensor | None:
        """(B, k + F) decoder inputs of samples ``idx``; ``dropout``: each covariate reads
        "unknown" with this probability (the index inputs are always known)."""
        inputs = self.predictor.decoder_inputs(self.prep, idx)
        k = len(self.predictor.covariates.names)
        if inputs is None or k == 0 or dropout <= 0:
            return inputs
        keep = torch.rand(len(idx), k, generator=generator, device=inputs.device) >= dropout  # (B, k)
        return torch.cat([inputs[:, :k] * keep, inputs[:, k:]], dim=1)

    def loss(self, out: dict[str, torch.Tensor], idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Sum over targets of the masked mean loss: MSE on standardised values, BCE on logits."""
        parts = {}
        for name, (per, m) in self._per_sample(out, idx).items():
            parts[name] = (per * m).sum() / m.sum().clamp(min=1.0)
        return sum(parts.values()), parts

    def sample_losses(self, out: dict[str, torch.Tensor], idx: torch.Tensor) -> torch.Tensor:
        """Each sample's share of ``loss`` -> (B,): their mean is the loss, so two decoders can be
        compared per sample (paired)."""
        total = torch.zeros(len(idx), device=idx.device)
        for per, m in self._per_sample(out, idx).values():
            total = total + per * m * (len(idx) / m.sum().clamp(min=1.0))
        return total

    def _per_sample(self, out: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """target -> (per-sample loss (B,), 1.0 where the target is known (B,))."""
        parts = {}
        for name, spec in self.specs.items():
            pred = out[name].float().squeeze(-1)  # (B,)
            y, m = self.y[name][idx], self.mask[name][idx]
            if spec["kind"] == "regression":
                per = (pred - y) ** 2
            else:
                per = torch.nn.functional.binary_cross_entropy_with_logits(pred, y, reduction="none")
            parts[name] = (per, m)
        return parts
