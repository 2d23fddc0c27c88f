r"""Cluster centroids / prototypical classification (MBC paper, appendix F, Tables 4-5).

A shared element encoder :math:`e` maps each image to a feature vector; a set encoder maps a
class's support set to its centroid :math:`c_k = f(\{e(x)\}_{x \in S_k})`; a query is
assigned to the nearest centroid, :math:`\hat y = \arg\min_k \lVert e(q) - c_k\rVert^2`
(training: softmax over :math:`-\lVert e(q) - c_k\rVert^2`, episodes of 5 classes with 10
support and 10 query images each, as in the paper).

Set encoders: the Slot Set Encoder (Table 4's two stages, K = 32 then 16, and one stage,
K = 32; g = mean) and Deep Sets mean pooling (Table 5). At test time each class's centroid is encoded from
1, 5, 20, 100 or all of its training images and every test image is classified among
all 10 classes; the paper's claim is that accuracy rises with the encoded set size, and
that the SSE is above Deep Sets at every size (its Figure 2, a plot: no figure to quote).
"All" is encoded in chunks of 100 (streaming for the SSE): mini-batch consistency is
what lets a centroid use every image of a class.

Data: offline, scikit-learn's digits (8×8; an MLP element encoder instead of the paper's
CNN); with ``--data-dir`` holding the MNIST idx files, MNIST (28×28). Metric: test accuracy
with centroids from all training images (the other sizes in the details). Baseline:
chance among the 10 classes (1/10). ``full``: 50 epochs (the paper's).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from flowrbc.validate._data import find_data, load_digits_split, load_mnist_dir
from flowrbc.validate._results import TaskResult
from flowrbc.validate._training import Context, Variant

NAME = "centroids"
TITLE = "prototypical classification: accuracy vs encoded set size"

_SSE = Variant("slot_set", 0, "none", "clean", (("slots", 32), ("slot_agg", "mean")), "SSE")
_SSE2 = Variant("slot_set", 0, "none", "clean", (("slots", 32), ("slots2", 16), ("slot_agg", "mean")), "SSE ×2")
_DS = Variant("deepsets", 0, "none", "none", (("pooling", "mean"),), "Deep Sets (mean)")
SET_SIZES = (1, 5, 20, 100, 0)  # 0 = all training images of the class


@dataclass(frozen=True)
class Protocol:
    n_way: int
    n_support: int
    n_query: int
    epochs: int
    steps: int
    lr: float
    width: int  # feature / centroid size
    repeats: int  # centroid draws averaged per set size at test time
    variants: tuple[Variant, ...] = (_SSE2, _SSE, _DS)


PROTOCOLS = {
    "toy": Protocol(5, 5, 5, 2, 6, 1e-3, 16, 1),
    "quick": Protocol(5, 10, 10, 10, 100, 1e-3, 64, 3),
    "full": Protocol(5, 10, 10, 50, 200, 1e-3, 128, 10),
}


def _protonet(encoder, in_features: int, width: int):
    import torch
    from torch import nn

    class ProtoNet(nn.Module):
        """Element encoder e (shared by support and queries) and a set encoder f."""

        def __init__(self) -> None:
            super().__init__()
            self.element = nn.Sequential(
                nn.Linear(in_features, 128), nn.LeakyReLU(),
                nn.Linear(128, 128), nn.LeakyReLU(),
                nn.Linear(128, width),
            )  # fmt: skip
            self.set_encoder = encoder

        def centroids(self, support):  # (K, n, F) -> (K, width)
            return self.set_encoder.embed(self.element(support))

        def centroids_chunked(self, support, chunk: int):
            """Centroids of large sets fed ``chunk`` images at a time (MBC)."""
            f = self.set_encoder
            if hasattr(f, "init_state"):
                state = f.init_state(support.shape[0])
                for part in torch.split(support, chunk, dim=1):
                    state = f.update(state, self.element(part))
                return f.finalize_embed(state)
            parts = torch.split(support, chunk, dim=1)
            return sum(f.embed(self.element(p)) * p.shape[1] for p in parts) / support.shape[1]

        def logits(self, support, queries):  # (K, n, F), (M, F) -> (M, K)
            return -torch.cdist(self.element(queries), self.centroids(support)) ** 2

    return ProtoNet()


def run(ctx: Context) -> TaskResult:
    import torch

    proto = PROTOCOLS[ctx.size]
    root = find_data(ctx.data_dir, "mnist")
    split = load_mnist_dir(root) if root is not None else load_digits_split(seed=ctx.seed)
    real = root is not None
    rng = np.random.default_rng(ctx.seed)
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32)  # noqa: E731
    xtr, ytr, xte, yte = flat(split.train_x), split.train_y, flat(split.test_x), split.test_y
    if ctx.size == "toy":
        keep = rng.permutation(len(xte))[:200]
        xte, yte = xte[keep], yte[keep]
    classes = np.unique(ytr)
    # A validation tenth of each class's training images (episodes for checkpoint choice).
    val_mask = np.zeros(len(ytr), dtype=bool)
    for c in classes:
        idx = rng.permutation(np.flatnonzero(ytr == c))
        val_mask[idx[: max(len(idx) // 10, proto.n_support + proto.n_query)]] = True
    dev = ctx.torch_device
    pools = {
        name: [torch.from_numpy(xtr[(ytr == c) & m]).to(dev) for c in classes]
        for name, m in (("train", ~val_mask), ("val", val_mask))
    }
    xte_t, yte_t = torch.from_numpy(xte).to(dev), torch.from_numpy(yte).to(dev)

    def episode(pool, gen):
        ways = torch.randperm(len(classes), generator=gen, device=dev)[: proto.n_way]
        sup, qry = [], []
        for c in ways.tolist():
            imgs = pool[c]
            pick = torch.randint(0, len(imgs), (proto.n_support + proto.n_query,), device=dev, generator=gen)
            sup.append(imgs[pick[: proto.n_support]])
            qry.append(imgs[pick[proto.n_support :]])
        labels = torch.arange(proto.n_way, device=dev).repeat_interleave(proto.n_query)
        return torch.stack(sup), torch.cat(qry), labels  # (K, n, F), (K·q, F), (K·q,)

    def loss_fn(model, batch):
        support, queries, labels = batch
        return torch.nn.functional.cross_entropy(model.logits(support, queries), labels)

    val_gen = torch.Generator(device=dev)
    val_gen.manual_seed(ctx.seed + 7)
    val_episodes = [episode(pools["val"], val_gen) for _ in range(10)]

    def validate(model) -> float:
        return float(np.mean([float(loss_fn(model, e)) for e in val_episodes]))

    def accuracy(model, size: int, gen) -> float:
        """Test accuracy among all classes with centroids from ``size`` images (0 = all)."""
        accs = []
        for _ in range(1 if size == 0 else proto.repeats):
            cents = []
            for imgs in pools["train"]:
                if size == 0:
                    cents.append(model.centroids_chunked(imgs[None], 100)[0])
                else:
                    pick = torch.randint(0, len(imgs), (size,), device=dev, generator=gen)
                    cents.append(model.centroids(imgs[pick][None])[0])
            c = torch.stack(cents)  # (10, width)
            pred = torch.cdist(model.element(xte_t), c).argmin(dim=1)
            accs.append(float((torch.as_tensor(classes, device=dev)[pred] == yte_t).float().mean()))
        return float(np.mean(accs))

    chance = 1.0 / len(classes)
    result = TaskResult(
        task=NAME,
        title=TITLE,
        metric="test accuracy (all)",
        higher_is_better=True,
        baseline_name="chance",
        data=split.source,
        real_data=real,
        protocol=(
            f"episodes of {proto.n_way} classes × ({proto.n_support} support + {proto.n_query} query); "
            f"{proto.epochs} epochs × {proto.steps} episodes, Adam lr {proto.lr:g}, width {proto.width}; test: "
            f"{len(xte)} images among {len(classes)} classes, centroids from 1/5/20/100/all training images "
            f"({proto.repeats} draws averaged)"
        ),
        paper_ref="",
        size=ctx.size,
        notes=["acc@n = accuracy with centroids from n images per class; 'all' encoded in chunks of 100"],
    )
    variants = ctx.select(list(proto.variants))
    ctx.plan(len(variants))
    in_features = xtr.shape[1]
    for v in variants:
        t0 = time.perf_counter()
        encoder, cfg = ctx.build(v, in_features=proto.width, outputs={}, width=proto.width)
        torch.manual_seed(ctx.seed)
        model = _protonet(encoder, in_features, proto.width).to(dev)
        fit = ctx.train(
            model,
            lambda gen: episode(pools["train"], gen),
            loss_fn,
            epochs=proto.epochs,
            steps=proto.steps,
            lr=proto.lr,
            evaluate=lambda m: {"score": validate(m)},
            label=v.name(),
        )
        gen = torch.Generator(device=dev)
        gen.manual_seed(ctx.seed + 11)
        with torch.no_grad():
            accs = {size: accuracy(model, size, gen) for size in SET_SIZES}
        extra = {"best_epoch": fit.best_epoch}
        extra.update({f"acc@{s or 'all'}": a for s, a in accs.items()})
        result.add_row(v.name(), cfg, accs[0], chance, started=t0, extra=extra)
        ctx.unit_done(f"{v.name()}: {accs[0]:.4g}")
    return result
