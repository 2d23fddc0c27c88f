r"""Set anomaly (DS++ paper's CelebA task): find the one image that does not belong.

Each set holds ``n`` images; ``n - 1`` share attributes, one does not. A permutation-invariant
model scores every candidate ``i`` by reading the set with ``i`` marked — an extra input
feature :math:`m_j = [j = i]` — so :math:`s_i = f(\{(x_j, m_j)\}_j)`, and the prediction is
:math:`\arg\max_i s_i` (softmax cross-entropy over the ``n`` candidates in training). This
keeps the set models' invariant contract and is exactly equivariant in the candidates.

Data: offline, scikit-learn's digits — ``n - 1`` images of one digit and one image of
another digit (train sets from the train images, test sets from the held-out images).
With ``--data-dir`` holding CelebA (``img_align_celeba/`` and ``list_attr_celeba.txt``), the
paper's construction: two random attributes, ``n - 1`` faces with both and one with
neither, images resized to ``image_size``² RGB; split by ``list_eval_partition.txt``.

Protocol (``full``): sets of 10, 18,000 train sets (the paper's count), batch 64, 50 epochs,
Adam lr 1e-4; metric test accuracy of the argmax. The paper's CelebA figures (Table 2) come
from convolutional element encoders on 64×64 faces; ours flattens pixels, so they are shown
for reference with CelebA only. Baseline: chance, 1/n.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowrbc.errors import FlowrbcError
from flowrbc.validate._data import find_data, load_celeba_dir, load_digits_split
from flowrbc.validate._results import TaskResult
from flowrbc.validate._training import Context, Variant, table2, train_variants

NAME = "set-anomaly"
TITLE = "find the odd image in a set"

PAPER = table2(
    ds=(0.3808, 0.1005, 0.1005),
    dspp=(0.5730, 0.6021, 0.5763),
    st=(0.1292, 0.4299, 0.4570),
    stpp=(0.6533, 0.6621, 0.6587),
)


@dataclass(frozen=True)
class Protocol:
    set_size: int
    n_test: int  # fixed test sets
    n_train_real: int  # fixed train sets built from CelebA
    image_size: int  # CelebA side after resizing
    batch: int
    epochs: int
    steps: int
    lr: float
    width: int
    variants: tuple[Variant, ...]


_ST = ()  # the papers' Set Transformer: ISAB with 32 inducing points, 4 heads (the default)
PROTOCOLS = {
    "toy": Protocol(6, 64, 64, 8, 16, 2, 6, 1e-3, 16, (Variant("deepsets++", 2, "set", "clean", label="Deep Sets++"),)),
    "quick": Protocol(
        10,
        500,
        600,
        16,
        16,
        8,
        30,
        1e-3,
        64,
        (
            Variant("deepsets", 3, "none", "none", label="Deep Sets"),
            Variant("deepsets++", 3, "set", "clean", label="Deep Sets++"),
            Variant("set_transformer++", 2, "set", "clean", _ST, "Set Transformer++"),
        ),
    ),
    "full": Protocol(
        10,
        2000,
        18_000,
        32,
        64,
        50,
        18_000 // 64,
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


def digit_sets(x: np.ndarray, y: np.ndarray, n_sets: int, set_size: int, rng: np.random.Generator):
    """Sets of ``set_size - 1`` images of one digit plus one of another:
    (n_sets, set_size, F) images and the odd one's position (n_sets,)."""
    by_class = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    classes = np.array(sorted(by_class))
    sets = np.empty((n_sets, set_size), dtype=np.int64)
    odd = rng.integers(0, set_size, size=n_sets)
    for s in range(n_sets):
        common, other = rng.choice(classes, size=2, replace=False)
        members = rng.choice(by_class[common], size=set_size - 1, replace=len(by_class[common]) < set_size - 1)
        sets[s] = np.insert(members, odd[s], rng.choice(by_class[other]))
    return x[sets], odd


def celeba_sets(celeba, split: int, n_sets: int, set_size: int, rng: np.random.Generator, image_size: int):
    """The paper's construction on CelebA: two random attributes; ``set_size - 1`` faces with
    both, one with neither. Returns (n_sets, set_size, F) and the odd positions."""
    rows = np.flatnonzero(celeba.split == split)
    attrs = celeba.attributes[rows]
    n_attr = attrs.shape[1]
    index = np.empty((n_sets, set_size), dtype=np.int64)
    odd = rng.integers(0, set_size, size=n_sets)
    for s in range(n_sets):
        for _ in range(1000):
            a, b = rng.choice(n_attr, size=2, replace=False)
            both = rows[attrs[:, a] & attrs[:, b]]
            neither = rows[~attrs[:, a] & ~attrs[:, b]]
            if len(both) >= set_size - 1 and len(neither) >= 1:
                break
        else:
            raise FlowrbcError(f"{celeba.image_dir.parent}: too few images to build attribute sets in split {split}")
        index[s] = np.insert(rng.choice(both, size=set_size - 1, replace=False), odd[s], rng.choice(neither))
    needed = np.unique(index)
    images = celeba.load(needed, image_size).reshape(len(needed), -1)
    lookup = np.searchsorted(needed, index)
    return images[lookup].astype(np.float32), odd


def run(ctx: Context) -> TaskResult:
    import torch

    proto = PROTOCOLS[ctx.size]
    rng = np.random.default_rng(ctx.seed)
    n = proto.set_size
    root = find_data(ctx.data_dir, "celeba")
    if root is not None:
        celeba = load_celeba_dir(root)
        xtr, otr = celeba_sets(celeba, 0, proto.n_train_real, n, rng, proto.image_size)
        xva, ova = celeba_sets(celeba, 1, max(proto.n_test // 2, 32), n, rng, proto.image_size)
        xte, ote = celeba_sets(celeba, 2, proto.n_test, n, rng, proto.image_size)
        source = f"CelebA in {root} ({proto.image_size}×{proto.image_size} RGB, flattened)"
        real = True
        draw = None
    else:
        split = load_digits_split(seed=ctx.seed)
        flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
        ptr_x, ptr_y = flat(split.train_x), split.train_y
        xva, ova = digit_sets(ptr_x, ptr_y, max(proto.n_test // 2, 32), n, rng)
        xte, ote = digit_sets(flat(split.test_x), split.test_y, proto.n_test, n, rng)
        source = split.source + f": {n - 1} images of one digit + 1 of another"
        real = False
        draw = (ptr_x, ptr_y)

    dev = ctx.torch_device
    feats = xte.shape[2]
    eye = torch.eye(n, device=dev)

    def marked(x):
        """(B, n, F) -> (B·n, n, F + 1): copy ``i`` of each set has element ``i`` marked."""
        b = x.shape[0]
        rep = x.unsqueeze(1).expand(b, n, n, feats)  # (B, n copies, n, F)
        mark = eye.expand(b, n, n).unsqueeze(-1)  # (B, n, n, 1)
        return torch.cat([rep, mark], dim=-1).reshape(b * n, n, feats + 1)

    def logits(model, x):
        return model(marked(x))["score"].reshape(x.shape[0], n)  # (B, n)

    if draw is not None:
        # Offline: a fresh pool of train sets each epoch's worth of steps (numpy, then device).
        pool_x, pool_o = digit_sets(*draw, proto.batch * proto.steps, n, rng)
    else:
        pool_x, pool_o = xtr, otr
    pool_x_t, pool_o_t = torch.from_numpy(pool_x).to(dev), torch.from_numpy(pool_o).to(dev)
    xva_t, ova_t = torch.from_numpy(xva).to(dev), torch.from_numpy(ova).to(dev)
    xte_t, ote_t = torch.from_numpy(xte).to(dev), torch.from_numpy(ote).to(dev)

    def sample(gen):
        idx = torch.randint(0, len(pool_x_t), (proto.batch,), device=dev, generator=gen)
        return pool_x_t[idx], pool_o_t[idx]

    def loss_fn(model, batch):
        x, odd = batch
        return torch.nn.functional.cross_entropy(logits(model, x), odd)

    def scores(model, x, odd) -> tuple[float, float]:
        out = torch.cat([logits(model, x[i : i + 64]) for i in range(0, len(x), 64)]).float()
        return float(torch.nn.functional.cross_entropy(out, odd)), float((out.argmax(1) == odd).float().mean())

    def test(model):
        ce, acc = scores(model, xte_t, ote_t)
        return acc, {"test_ce": ce}

    result = TaskResult(
        task=NAME,
        title=TITLE,
        metric="test accuracy",
        higher_is_better=True,
        baseline_name="chance",
        data=source,
        real_data=real,
        protocol=(
            f"sets of {n}; {len(pool_x)} train / {len(xva)} val / {len(xte)} test sets; candidates scored by marking; "
            f"batch {proto.batch}, {proto.epochs} epochs × {proto.steps} steps, Adam lr {proto.lr:g}, width {proto.width}"
        ),
        paper_ref=(
            "DS++ paper Table 2 (CelebA accuracy; conv encoders on 64×64 faces, ours flattened pixels)" if real else ""
        ),
        size=ctx.size,
    )
    if not real:
        result.notes.append("paper figures omitted: digits are not CelebA (use --data-dir with CelebA)")
    train_variants(
        ctx,
        result,
        ctx.select(list(proto.variants)),
        in_features=feats + 1,
        outputs={"score": 1},
        width=proto.width,
        sample=sample,
        loss_fn=loss_fn,
        validate=lambda m: scores(m, xva_t, ova_t)[0],
        test=test,
        baseline=1.0 / n,
        epochs=proto.epochs,
        steps=proto.steps,
        lr=proto.lr,
        paper=PAPER if real else None,
    )
    return result
