r"""MNIST Var (DS++ paper) on handwritten digits: predict the variance of a set's labels.

Each set holds ``set_size`` digit images drawn with replacement from one split; its target is
the empirical variance of their labels :math:`y = \frac{1}{n}\sum_i (l_i - \bar l)^2`. An
element is the image's pixel vector (flattened, scaled to [0, 1]).

Data: offline, scikit-learn's digits (1,797 real 8×8 handwritten digits, 64 features),
split 70/30 per class; train sets are drawn afresh every batch, the test sets are fixed.
With ``--data-dir`` holding the MNIST idx files, MNIST itself (28×28, 784 features): the
training images form the train pool, the t10k images the test pool.

Protocol (``full`` = the paper's): sets of 10, 50,000 train / 1,000 test sets, batch 64,
50 epochs, Adam lr 1e-4; metric test MSE. The paper's figures (Table 2: Deep Sets 3/25/50,
Deep Sets++ 3/25/50, Set Transformer(++) 2/8/16; Table 1: residual × norm at depth 50/16)
are shown only when real MNIST is used. Baseline: the mean predictor (≈ the target's
variance, about 6 for sets of 10 uniform digits).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowrbc.validate._data import find_data, load_digits_split, load_mnist_dir
from flowrbc.validate._results import TaskResult
from flowrbc.validate._training import Context, Variant, batched, table1, table2, train_variants

NAME = "digits-var"
TITLE = "variance of the labels of a set of digit images"

PAPER = {
    **table2(
        ds=(0.4520, 1.3492, 5.5545),
        dspp=(0.5895, 0.3914, 0.3441),
        st=(0.6151, 0.3271, 6.2663),
        stpp=(1.1525, 0.9437, 0.8023),
    ),
    **table1(
        ds={
            ("nonclean", "layer"): 0.3528,
            ("nonclean", "feature"): 0.3371,
            ("nonclean", "set"): 0.3421,
            ("clean", "layer"): 0.3997,
            ("clean", "feature"): 0.3368,
            ("clean", "set"): 0.3441,
        },
        st={
            ("nonclean", "layer"): 2.0663,
            ("nonclean", "feature"): 0.4043,
            ("nonclean", "set"): 0.4064,
            ("clean", "layer"): 0.6383,
            ("clean", "feature"): 0.7946,
            ("clean", "set"): 0.8023,
        },
    ),
}

_DS = [Variant("deepsets", d, "none", "none", label="Deep Sets") for d in (3, 25)]
_DSPP = [Variant("deepsets++", d, "set", "clean", label="Deep Sets++") for d in (3, 25)]


@dataclass(frozen=True)
class Protocol:
    set_size: int
    n_test: int  # fixed test sets
    batch: int
    epochs: int
    steps: int
    lr: float
    width: int
    variants: tuple[Variant, ...]

    def describe(self, pools: str) -> str:
        return (
            f"sets of {self.set_size} images ({pools}); {self.n_test} fixed test sets; batch {self.batch}, "
            f"{self.epochs} epochs × {self.steps} steps, Adam lr {self.lr:g}, width {self.width}"
        )


PROTOCOLS = {
    "toy": Protocol(10, 128, 32, 2, 10, 1e-3, 16, (_DS[0], _DSPP[0])),
    "quick": Protocol(10, 1000, 64, 12, 100, 2e-3, 32, tuple(_DS + _DSPP)),
    "full": Protocol(
        10,
        1000,
        64,
        50,
        50_000 // 64,
        1e-4,
        128,
        tuple(
            _DS
            + [Variant("deepsets", 50, "none", "none", label="Deep Sets")]
            + _DSPP
            + [Variant("deepsets++", 50, n, r, label="Deep Sets++") for r in ("clean", "nonclean") for n in ("layer", "feature", "set")]
            + [Variant("set_transformer", d, "none", "nonclean", label="Set Transformer") for d in (2, 8, 16)]
            + [Variant("set_transformer++", d, "set", "clean", label="Set Transformer++") for d in (2, 8, 16)]
        ),
    ),
}


def label_variance(labels: np.ndarray) -> np.ndarray:
    """Population variance of each row of labels (n_sets, set_size) -> (n_sets,)."""
    return labels.astype(np.float64).var(axis=1).astype(np.float32)


def load_pools(ctx: Context):
    """(train images (n, F), train labels, test images, test labels, source, real)."""
    mnist = find_data(ctx.data_dir, "mnist")
    if mnist is not None:
        split = load_mnist_dir(mnist)
        real = True
    else:
        split = load_digits_split(seed=ctx.seed)
        real = False
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    return flat(split.train_x), split.train_y, flat(split.test_x), split.test_y, split.source, real


def run(ctx: Context) -> TaskResult:
    import torch

    proto = PROTOCOLS[ctx.size]
    xtr, ltr, xte, lte, source, real = load_pools(ctx)
    rng = np.random.default_rng(ctx.seed + 1)
    # Fixed validation sets from the train pool (checkpoint choice) and test sets from the test pool.
    val_idx = rng.integers(0, len(xtr), size=(max(proto.n_test // 2, 64), proto.set_size))
    test_idx = rng.integers(0, len(xte), size=(proto.n_test, proto.set_size))
    train_targets = label_variance(ltr[rng.integers(0, len(xtr), size=(4096, proto.set_size))])

    dev = ctx.torch_device
    xtr_t = torch.from_numpy(xtr).to(dev)
    ltr_t = torch.from_numpy(ltr).to(dev).float()
    xva_t, yva_t = torch.from_numpy(xtr[val_idx]).to(dev), torch.from_numpy(label_variance(ltr[val_idx])).to(dev)
    yte = label_variance(lte[test_idx])
    xte_t, yte_t = torch.from_numpy(xte[test_idx]).to(dev), torch.from_numpy(yte).to(dev)

    result = TaskResult(
        task=NAME,
        title=TITLE,
        metric="test MSE",
        higher_is_better=False,
        baseline_name="mean predictor",
        data=source,
        real_data=real,
        protocol=proto.describe(f"{len(xtr)} train / {len(xte)} test images, {xtr.shape[1]} pixels each"),
        paper_ref="DS++ paper Tables 1-2 (MNIST Var MSE), at its full protocol" if real else "",
        size=ctx.size,
    )
    if not real:
        result.notes.append("paper figures omitted: 8×8 digits are not MNIST (use --data-dir with the MNIST idx files)")

    def sample(gen):
        idx = torch.randint(0, len(xtr_t), (proto.batch, proto.set_size), device=dev, generator=gen)
        return xtr_t[idx], ltr_t[idx].var(dim=1, unbiased=False)  # (B, n, F), (B,)

    def loss_fn(model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x)["variance"][:, 0], y)

    def mse(model, x, y) -> float:
        return float(torch.mean((batched(model, x, "variance")[:, 0] - y) ** 2))

    train_variants(
        ctx,
        result,
        ctx.select(list(proto.variants)),
        in_features=xtr.shape[1],
        outputs={"variance": 1},
        width=proto.width,
        sample=sample,
        loss_fn=loss_fn,
        validate=lambda m: mse(m, xva_t, yva_t),
        test=lambda m: (mse(m, xte_t, yte_t), {}),
        baseline=float(np.mean((yte - train_targets.mean()) ** 2)),
        epochs=proto.epochs,
        steps=proto.steps,
        lr=proto.lr,
        paper=PAPER if real else None,
    )
    return result
