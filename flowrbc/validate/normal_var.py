r"""Normal Var (DS++ paper): predict the variance of a set of 1-D Normal samples.

Data: synthetic, the paper's generator. Each set draws μ ~ U(-10, 10), σ² ~ U(0, 10) and
n samples x_i ~ N(μ, σ²); the target is the set's empirical variance
:math:`y = \frac{1}{n}\sum_i (x_i - \bar x)^2`. Inputs are fed raw (no scaling), as in the
paper: a mean of ±10 against a spread of ≤ 3 is what makes deep un-normalised models fail.

Protocol (``full`` = the paper's): 10,000 train / 1,000 test sets of 1,000 samples, batch 64,
50 epochs, Adam lr 1e-4; metric test MSE. ``quick`` keeps the generator and shrinks sets,
data and steps. The paper reports Normal Var in Table 1 only (Deep Sets at 50 blocks, Set
Transformer at 16, residual type × norm); those cells appear in the paper column.
Baseline: the mean predictor (train-target mean), MSE ≈ Var U(0, 10) ≈ 8.3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowrbc.validate._results import TaskResult
from flowrbc.validate._training import Context, Variant, batched, table1, train_variants

NAME = "normal-var"
TITLE = "variance of 1-D Normal sets"

PAPER = table1(
    ds={
        ("nonclean", "layer"): 1.4658,
        ("nonclean", "feature"): 0.8352,
        ("nonclean", "set"): 0.2094,
        ("clean", "layer"): 0.0384,
        ("clean", "feature"): 0.1195,
        ("clean", "set"): 0.0198,
    },
    st={
        ("nonclean", "layer"): 0.0801,
        ("nonclean", "feature"): 0.0691,
        ("nonclean", "set"): 0.0249,
        ("clean", "layer"): 0.0104,
        ("clean", "feature"): 0.0074,
        ("clean", "set"): 0.0030,
    },
)

_DEPTH_PAIR = [
    Variant("deepsets", 3, "none", "none", label="Deep Sets"),
    Variant("deepsets", 25, "none", "none", label="Deep Sets"),
    Variant("deepsets++", 3, "set", "clean", label="Deep Sets++"),
    Variant("deepsets++", 25, "set", "clean", label="Deep Sets++"),
]
_NORMS = [
    Variant("deepsets++", 3, "layer", "clean", label="Deep Sets++"),
    Variant("deepsets++", 3, "feature", "clean", label="Deep Sets++"),
]


@dataclass(frozen=True)
class Protocol:
    n_train: int
    n_test: int
    set_size: int
    batch: int
    epochs: int
    steps: int  # per epoch
    lr: float
    width: int
    variants: tuple[Variant, ...]

    def describe(self) -> str:
        return (
            f"{self.n_train} train / {self.n_test} test sets of {self.set_size} samples, "
            f"batch {self.batch}, {self.epochs} epochs × {self.steps} steps, Adam lr {self.lr:g}, width {self.width}"
        )


PROTOCOLS = {
    "toy": Protocol(256, 128, 32, 32, 2, 10, 1e-3, 16, (_DEPTH_PAIR[0], _DEPTH_PAIR[2])),
    "quick": Protocol(2048, 512, 50, 32, 15, 100, 3e-3, 32, (_DEPTH_PAIR[0], _DEPTH_PAIR[2], *_NORMS)),
    "full": Protocol(
        10_000,
        1_000,
        1_000,
        64,
        50,
        10_000 // 64,
        1e-4,
        128,
        tuple(
            _DEPTH_PAIR
            + [Variant("deepsets", 50, "none", "none", label="Deep Sets")]
            + [Variant("deepsets++", 50, n, r, label="Deep Sets++") for r in ("clean", "nonclean") for n in ("layer", "feature", "set")]
            + [Variant("set_transformer++", 16, n, r, label="Set Transformer++") for r in ("clean", "nonclean") for n in ("layer", "feature", "set")]
        ),
    ),
}


def make_sets(n_sets: int, set_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n_sets`` sets (n_sets, set_size, 1) float32 and their empirical variances (n_sets,)."""
    mean = rng.uniform(-10, 10, size=(n_sets, 1, 1))
    var = rng.uniform(0, 10, size=(n_sets, 1, 1))
    x = rng.normal(size=(n_sets, set_size, 1)) * np.sqrt(var) + mean
    return x.astype(np.float32), x[..., 0].var(axis=1).astype(np.float32)


def run(ctx: Context) -> TaskResult:
    import torch

    proto = PROTOCOLS[ctx.size]
    rng = np.random.default_rng(ctx.seed)
    xtr, ytr = make_sets(proto.n_train, proto.set_size, rng)
    xva, yva = make_sets(max(proto.n_test // 2, 64), proto.set_size, rng)
    xte, yte = make_sets(proto.n_test, proto.set_size, rng)
    dev = ctx.torch_device
    xtr_t, ytr_t, xva_t, yva_t, xte_t, yte_t = (torch.from_numpy(a).to(dev) for a in (xtr, ytr, xva, yva, xte, yte))

    result = TaskResult(
        task=NAME,
        title=TITLE,
        metric="test MSE",
        higher_is_better=False,
        baseline_name="mean predictor",
        data="synthetic Normal sets (the paper's generator)",
        real_data=False,
        protocol=proto.describe(),
        paper_ref="DS++ paper Table 1 (Normal Var MSE; Deep Sets 50 blocks, Set Transformer 16), at its full protocol",
        size=ctx.size,
    )

    def sample(gen):
        idx = torch.randint(0, len(xtr_t), (proto.batch,), device=dev, generator=gen)
        return xtr_t[idx], ytr_t[idx]

    def loss_fn(model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x)["variance"][:, 0], y)

    def mse(model, x, y) -> float:
        return float(torch.mean((batched(model, x, "variance")[:, 0] - y) ** 2))

    train_variants(
        ctx,
        result,
        ctx.select(list(proto.variants)),
        in_features=1,
        outputs={"variance": 1},
        width=proto.width,
        sample=sample,
        loss_fn=loss_fn,
        validate=lambda m: mse(m, xva_t, yva_t),
        test=lambda m: (mse(m, xte_t, yte_t), {}),
        baseline=float(np.mean((yte - ytr.mean()) ** 2)),
        epochs=proto.epochs,
        steps=proto.steps,
        lr=proto.lr,
        paper=PAPER,
    )
    return result
