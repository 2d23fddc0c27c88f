"""Hematocrit (regression) and anemia (classification) from a patient's red blood cells
(DS++ paper's Flow-RBC tasks). Tasks ``hematocrit`` and ``anemia``.

A set is ``set_size`` cells of one patient, each (volume fL, hemoglobin pg), redrawn from the
patient's cells every batch (the reference code fixes one subset for all epochs; we do not).
Cells are standardised with the training cells' mean and SD per channel; the hematocrit
target is standardised for training and the MSE reported in the original units (%²).

Data: offline, the synthetic cohort (``flowrbc.io.builtin.synthetic_cohort``: physiology-based,
with the split it assigns and the bound it reports). With ``--data-dir``: a cohort
``.h5ad`` (``flowrbc ingest``) or the published Flow-RBC HDF5 (``train_data``,
``train_labels``, ``test_data``, ``test_labels``; via ``import_flowrbc_h5``). The public
Flow-RBC file has hematocrit only; ``anemia`` needs a cohort with an ``anemia`` column.

Protocol (``full`` = the DS++ paper's): 1,000 cells per set, batch 64, 30 epochs, Adam
lr 1e-4; metrics test MSE (hematocrit) and test accuracy (anemia). Paper figures (Table 2,
Table 1 for hematocrit) are shown with Flow-RBC data only. Baselines: the mean predictor /
majority class; the moment-feature gradient-boosting baseline (``flowrbc.metrics``) and, on
synthetic data, the bound (best possible from the cells, sex and age) is given in the notes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flowrbc.errors import FlowrbcError
from flowrbc.validate._data import find_data
from flowrbc.validate._results import TaskResult
from flowrbc.validate._training import Context, Variant, batched, table1, table2, train_variants

PAPER_HCT = {
    **table2(
        ds=(19.1257, 20.2002, 25.8791),
        dspp=(19.5882, 19.1384, 19.2118),
        st=(18.8750, 18.9095, 18.7436),
        stpp=(18.9223, 18.8984, 18.7008),
    ),
    **table1(
        ds={
            ("nonclean", "layer"): 19.6649,
            ("nonclean", "feature"): 19.9801,
            ("nonclean", "set"): 19.3146,
            ("clean", "layer"): 19.4192,
            ("clean", "feature"): 19.3917,
            ("clean", "set"): 19.2118,
        },
        st={
            ("nonclean", "layer"): 19.1975,
            ("nonclean", "feature"): 19.4968,
            ("nonclean", "set"): 19.0521,
            ("clean", "layer"): 18.5747,
            ("clean", "feature"): 19.1967,
            ("clean", "set"): 18.7008,
        },
    ),
}
PAPER_ANEMIA = table2(
    ds=(0.5282, 0.4856, 0.4856),
    dspp=(0.5256, 0.5341, 0.5561),
    st=(0.5938, 0.5943, 0.5853),
    stpp=(0.5770, 0.5680, 0.5544),
)

_ST = ()  # the papers' Set Transformer: ISAB with 32 inducing points, 4 heads (the default)


@dataclass(frozen=True)
class Protocol:
    n_patients: int  # synthetic cohort size
    n_cells: int  # cells simulated per patient
    max_real: int | None  # cap on samples read per split from a Flow-RBC file
    set_size: int
    batch: int
    epochs: int
    steps: int
    lr: float
    width: int
    variants: tuple[Variant, ...]


PROTOCOLS = {
    "toy": Protocol(120, 100, 200, 50, 16, 2, 6, 1e-3, 16, (Variant("deepsets++", 3, "set", "clean", label="Deep Sets++"),)),
    "quick": Protocol(
        1500,
        400,
        4000,
        200,
        32,
        8,
        40,
        1e-3,
        64,
        (
            Variant("deepsets", 3, "none", "none", label="Deep Sets"),
            Variant("deepsets++", 3, "set", "clean", label="Deep Sets++"),
            Variant("set_transformer++", 2, "set", "clean", _ST, "Set Transformer++"),
        ),
    ),
    "full": Protocol(
        20_000,
        1000,
        None,
        1000,
        64,
        30,
        500,
        1e-4,
        128,
        tuple(
            [Variant("deepsets", d, "none", "none", label="Deep Sets") for d in (3, 25, 50)]
            + [Variant("deepsets++", d, "set", "clean", label="Deep Sets++") for d in (3, 25, 50)]
            + [Variant("set_transformer", d, "none", "nonclean", _ST, "Set Transformer") for d in (2, 8, 16)]
            + [Variant("set_transformer++", d, "set", "clean", _ST, "Set Transformer++") for d in (2, 8, 16)]
        ),
    ),
}


def load_cohort(ctx: Context, proto: Protocol):
    """(cohort, real) from ``--data-dir`` (a .h5ad cohort or a Flow-RBC .h5) or synthetic."""
    root = find_data(ctx.data_dir, "flowrbc")
    if root is None:
        from flowrbc.io.builtin import synthetic_cohort

        return synthetic_cohort(proto.n_patients, proto.n_cells, seed=ctx.seed), False
    files = [root] if root.is_file() else sorted(root.glob("*.h5ad")) + sorted(root.glob("*.h5"))
    if not files:
        raise FlowrbcError(f"{root}: no cohort (.h5ad) or Flow-RBC HDF5 (.h5) file")
    path = Path(files[0])
    if path.suffix == ".h5ad":
        from flowrbc.io.cohort import read_cohort

        return read_cohort(path), True
    from flowrbc.io.flowrbc_h5 import import_flowrbc_h5

    return import_flowrbc_h5(path, max_samples=proto.max_real, seed=ctx.seed), True


class CellSets:
    """A cohort's cells on the device, with per-split sample indices for fast set drawing."""

    def __init__(self, cohort, target: str, device, rng: np.random.Generator):
        import torch

        cols = cohort.role_columns(("volume", "hemoglobin"))
        samples = cohort.samples
        if target not in samples.columns:
            raise FlowrbcError(f"cohort {cohort.source!r}: no {target!r} column (the public Flow-RBC file has hematocrit only)")
        y = samples[target].to_numpy(dtype=np.float64)
        split = samples["split"].astype(str).to_numpy()
        ok = np.isfinite(y) & (np.diff(cohort.offsets) > 0)
        self.index = {s: np.flatnonzero((split == s) & ok) for s in ("train", "val", "test")}
        for s, idx in self.index.items():
            if len(idx) == 0:
                raise FlowrbcError(f"cohort {cohort.source!r}: no {s} samples with a {target} value")
        X = cohort.X[:, cols]
        tr = self.index["train"]
        train_rows = np.concatenate([np.arange(cohort.offsets[i], cohort.offsets[i + 1]) for i in tr[:2000]])
        self.mean = X[train_rows].mean(axis=0)
        self.sd = X[train_rows].std(axis=0) + 1e-6
        self.X = torch.from_numpy(((X - self.mean) / self.sd).astype(np.float32)).to(device)
        self.start = torch.from_numpy(cohort.offsets[:-1]).to(device)
        self.count = torch.from_numpy(np.diff(cohort.offsets)).to(device)
        self.y = y
        self.y_t = torch.from_numpy(y.astype(np.float32)).to(device)
        self.device = device
        self.cohort = cohort
        self.rng = rng

    def draw(self, patients, set_size: int, gen=None):
        """Cells (B, set_size, 2) of ``patients`` (tensor), drawn with replacement."""
        import torch

        u = torch.rand(len(patients), set_size, device=self.device, generator=gen)
        rows = self.start[patients, None] + (u * self.count[patients, None]).long()
        return self.X[rows]

    def fixed(self, split: str, set_size: int):
        """One fixed draw per sample of ``split`` (seeded), for validation and test."""
        import torch

        gen = torch.Generator(device=self.device)
        gen.manual_seed(int(self.rng.integers(2**31)))
        p = torch.from_numpy(self.index[split]).to(self.device)
        return self.draw(p, set_size, gen), self.y_t[p]


def _moment_reference(cells: CellSets, target: str) -> float | None:
    """The moment-feature baseline's test metric (MSE or accuracy), or None if unavailable."""
    from flowrbc.metrics import fit_moment_baseline, moment_features

    c = cells.cohort
    vol, hb = (c.X[:, j] for j in c.role_columns(("volume", "hemoglobin")))
    feats, names = moment_features(vol, hb, c.offsets)
    n = c.n_samples
    mask = {s: np.zeros(n, dtype=bool) for s in cells.index}
    for s, idx in cells.index.items():
        mask[s][idx] = True
    base = fit_moment_baseline(feats, {target: cells.y}, mask["train"], mask["val"], names)
    pred = base.predict(feats[mask["test"]])[target]
    y = cells.y[mask["test"]]
    return float(np.mean((pred - y) ** 2)) if target == "hematocrit" else float(np.mean((pred > 0.5) == (y > 0.5)))


def _run(ctx: Context, target: str) -> TaskResult:
    import torch

    proto = PROTOCOLS[ctx.size]
    cohort, real = load_cohort(ctx, proto)
    rng = np.random.default_rng(ctx.seed)
    dev = ctx.torch_device
    cells = CellSets(cohort, target, dev, rng)
    regression = target == "hematocrit"
    tr = cells.index["train"]
    y_mean, y_sd = float(cells.y[tr].mean()), float(cells.y[tr].std() + 1e-6)
    xva, yva = cells.fixed("val", proto.set_size)
    xte, yte = cells.fixed("test", proto.set_size)
    tr_t = torch.from_numpy(tr).to(dev)
    head = target

    def sample(gen):
        p = tr_t[torch.randint(0, len(tr_t), (proto.batch,), device=dev, generator=gen)]
        return cells.draw(p, proto.set_size, gen), cells.y_t[p]

    def loss_fn(model, batch):
        x, y = batch
        out = model(x)[head][:, 0]
        if regression:
            return torch.nn.functional.mse_loss(out, (y - y_mean) / y_sd)
        return torch.nn.functional.binary_cross_entropy_with_logits(out, y)

    def predict(model, x):
        out = batched(model, x, head, chunk=128)[:, 0].float()
        return out * y_sd + y_mean if regression else out

    def mse(model, x, y) -> float:
        return float(torch.mean((predict(model, x) - y) ** 2))

    def bce(model, x, y) -> float:
        return float(torch.nn.functional.binary_cross_entropy_with_logits(predict(model, x), y))

    def test(model):
        if regression:
            return mse(model, xte, yte), {}
        logits = predict(model, xte)
        return float(((logits > 0) == (yte > 0.5)).float().mean()), {"test_bce": bce(model, xte, yte)}

    y_test = cells.y[cells.index["test"]]
    if regression:
        baseline = float(np.mean((y_test - y_mean) ** 2))
    else:
        majority = float(cells.y[tr].mean() >= 0.5)
        baseline = float(np.mean((y_test > 0.5) == (majority > 0.5)))

    n = {s: len(i) for s, i in cells.index.items()}
    result = TaskResult(
        task=target,
        title="hematocrit (%) from a patient's red cells" if regression else "anemia (WHO) from a patient's red cells",
        metric="test MSE" if regression else "test accuracy",
        higher_is_better=not regression,
        baseline_name="mean predictor" if regression else "majority class",
        data=cohort.source if real else f"synthetic cohort ({cohort.source})",
        real_data=real,
        protocol=(
            f"{n['train']} train / {n['val']} val / {n['test']} test patients; sets of {proto.set_size} cells "
            f"(redrawn each batch; one fixed draw for val/test), batch {proto.batch}, {proto.epochs} epochs × "
            f"{proto.steps} steps, Adam lr {proto.lr:g}, width {proto.width}"
        ),
        paper_ref=(f"DS++ paper Table 2{' and Table 1' if regression else ''} (Flow-RBC), at its full protocol" if real else ""),
        size=ctx.size,
    )
    if not real:
        bound = cohort.samples.attrs.get("bound", {})
        key = "bound_hematocrit_mse" if regression else "bound_anemia_accuracy"
        if key in bound:
            result.notes.append(f"bound {result.metric.split()[-1]} (best possible from the cells, sex and age; "
                                f"flowrbc.bound): {bound[key]:.4g}")
        result.notes.append("paper figures omitted: synthetic cohort, not Flow-RBC (use --data-dir)")
    try:
        ref = _moment_reference(cells, target)
    except (ImportError, ValueError) as exc:  # the reference is a note, never a failure of the task
        result.notes.append(f"moment baseline unavailable: {exc}")
    else:
        result.notes.append(f"moment-feature baseline (gradient boosting on MCV, RDW, …): {result.metric} {ref:.4g}")

    train_variants(
        ctx,
        result,
        ctx.select(list(proto.variants)),
        in_features=2,
        outputs={head: 1},
        width=proto.width,
        sample=sample,
        loss_fn=loss_fn,
        validate=(lambda m: mse(m, xva, yva)) if regression else (lambda m: bce(m, xva, yva)),
        test=test,
        baseline=baseline,
        epochs=proto.epochs,
        steps=proto.steps,
        lr=proto.lr,
        paper=(PAPER_HCT if regression else PAPER_ANEMIA) if real else None,
    )
    return result


def run(ctx: Context) -> TaskResult:
    """Task ``hematocrit``."""
    return _run(ctx, "hematocrit")


def run_anemia(ctx: Context) -> TaskResult:
    """Task ``anemia``."""
    return _run(ctx, "anemia")
