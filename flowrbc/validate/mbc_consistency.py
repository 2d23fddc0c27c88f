r"""Mini-batch consistency check (MBC paper, appendix C.3 and its Table 1).

Property 1: a set encoder f with aggregation g is mini-batch consistent when, for any
partition :math:`X = X_1 \cup \dots \cup X_p`, :math:`g(f(X_1), \dots, f(X_p)) = f(X)`.
Each model encodes random sets whole and in 4 uneven random chunks, and the gap
:math:`\max|\text{chunked} - \text{whole}| / \max|\text{whole}|` is measured in float64;
a model passes when the gap is below 1e-9. The chunk encodings are combined as the
model's pooling allows: the Slot Set Encoder through its streaming API
(``init_state``/``update``/``finalize``), Deep Sets by summing (sum pooling) or
count-weighting (mean pooling) the chunk embeddings, the Set Transformer by count-weighting
its chunk embeddings (its PMA has no exact combination rule; the paper's point is that
self-attention mixes the elements of whatever chunk it sees).

Expected (appendix Table 1 and section C.3): SSE passes; Deep Sets with plain per-element
layers passes; the original Deep Sets (equivariant layers :math:`x - \mathrm{mean}(x)`)
fails; the Set Transformer fails. Deep Sets++ is added: set norm standardises with the
statistics of the whole set, so it fails too (not in the paper's table). The property is
structural, so the models are checked at initialisation (no training, no baseline).
"""

from __future__ import annotations

import time

import numpy as np

from flowrbc.validate._results import TaskResult
from flowrbc.validate._training import Context, Variant

NAME = "mbc-consistency"
TITLE = "chunked vs whole-set encoding (mini-batch consistency)"
TOLERANCE = 1e-9

VARIANTS = (
    (Variant("slot_set", 2, "none", "clean", (("slot_agg", "sum"),), "SSE (g=sum)"), "passes"),
    (Variant("slot_set", 2, "none", "clean", (("slot_agg", "mean"),), "SSE (g=mean)"), "passes"),
    (Variant("slot_set", 2, "none", "clean", (("slot_agg", "max"),), "SSE (g=max)"), "passes"),
    (Variant("slot_set", 2, "none", "clean", (("slots2", 4),), "SSE ×2 (hierarchical)"), "passes"),
    (Variant("deepsets", 3, "none", "none", (("pooling", "sum"),), "Deep Sets (sum)"), "passes (MBC version)"),
    (Variant("deepsets", 3, "none", "none", (("pooling", "mean"),), "Deep Sets (mean)"), "passes (MBC version)"),
    (Variant("deepsets", 3, "none", "none", (("equivariant", "mean"), ("pooling", "sum")), "Deep Sets (original, x - mean)"), "fails"),
    (Variant("deepsets++", 3, "set", "clean", (), "Deep Sets++"), "— (not in the table)"),
    (Variant("set_transformer", 2, "none", "nonclean", (("inducing", 0),), "Set Transformer (full attention)"), "fails"),
    (Variant("set_transformer", 2, "none", "nonclean", (("inducing", 8),), "Set Transformer (ISAB)"), "fails"),
)

SIZES = {"toy": (2, 40), "quick": (8, 400), "full": (16, 2000)}  # (sets, elements per set)


def chunked_output(model, x, bounds: list[int]):
    """The model's outputs with the set fed in the chunks ``x[:, a:b]``."""
    import torch

    parts = [x[:, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    if hasattr(model, "init_state"):
        state = model.init_state(x.shape[0])
        for p in parts:
            state = model.update(state, p)
        return model.finalize(state)
    z = [model.embed(p) for p in parts]
    if model.config.pooling == "sum":
        pooled = torch.stack(z).sum(0)
    elif model.config.pooling == "max":
        pooled = torch.stack(z).amax(0)
    else:  # mean (and PMA, whose closest rule is the count-weighted mean)
        pooled = sum(zi * p.shape[1] for zi, p in zip(z, parts)) / x.shape[1]
    return model.decoder(pooled)


def run(ctx: Context) -> TaskResult:
    import torch

    n_sets, n = SIZES[ctx.size]
    rng = np.random.default_rng(ctx.seed)
    cuts = np.sort(rng.choice(np.arange(1, n), size=3, replace=False))
    bounds = [0, *cuts.tolist(), n]
    x = torch.from_numpy(rng.normal(size=(n_sets, n, 2))).to(ctx.torch_device)  # float64
    result = TaskResult(
        task=NAME,
        title=TITLE,
        metric="relative gap",
        higher_is_better=False,
        baseline_name="tolerance",
        data="random Gaussian sets (float64)",
        real_data=False,
        protocol=f"{n_sets} sets of {n} elements, chunks {np.diff(bounds).tolist()}; untrained models; pass: gap < {TOLERANCE:g}",
        paper_ref="MBC appendix Table 1 (pass/fail) in the 'paper' detail",
        size=ctx.size,
    )
    chosen = [(v, e) for v, e in VARIANTS if v in ctx.select([v for v, _ in VARIANTS])]
    ctx.plan(len(chosen))
    for v, expected in chosen:
        t0 = time.perf_counter()
        model, cfg = ctx.build(v, in_features=2, outputs={"y": 3}, width=32)
        model = model.double().eval()
        with torch.no_grad():
            whole = model(x)["y"]
            pieces = chunked_output(model, x, bounds)["y"]
        gap = float((pieces - whole).abs().max() / whole.abs().max().clamp_min(1e-300))
        passed = gap < TOLERANCE
        result.add_row(
            v.name(), cfg, gap, TOLERANCE, started=t0, judged=False,
            extra={"MBC": "pass" if passed else "FAIL", "paper": expected},
        )
        ctx.unit_done(f"{v.name()}: {'pass' if passed else 'fail'}")
    return result
