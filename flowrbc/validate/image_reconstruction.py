r"""Image reconstruction from a pixel set (MBC paper, appendix D, Tables 2-3).

An image patch is a set of pixels :math:`(x, y, r, g, b)`. A random subset of them is
encoded into one code :math:`z = f(\{p_i\})` by a set encoder; a decoder MLP maps
:math:`(z, \gamma(x, y))` to the colour of *every* pixel of the patch (:math:`\gamma`:
coordinates with sin/cos features). Metric: the mean squared colour error over all
pixels of held-out patches (colours in [0, 1]).

Encoders compared: the Slot Set Encoder (``slot_set``) and Deep Sets with mean pooling.
Mini-batch consistency is shown on the task itself: the encoded pixels are fed in 4 chunks
(SSE: ``init_state``/``update``/``finalize``; Deep Sets: count-weighted mean of the chunk
embeddings) and the reconstruction error and the largest difference to the whole-set
reconstruction are reported.

Data: offline, scikit-learn's two sample photographs (china.jpg, flower.jpg, 427×640)
cut into non-overlapping ``patch``×``patch`` patches, split 80/20 at random. (The paper
uses CelebA faces; its results are plots, so there is no figure to set beside ours.)

Architecture (Tables 2-3): per-pixel encoder 5 → width, set pooling, code; decoder
(code + coordinates) → 128 → 128 → 128 → 3. ``full``: 32×32 patches, 300 encoded
pixels, 200 epochs (the MBC appendix's schedule). Baseline: the mean colour of the
training pixels (the patch-mean colour of the encoded pixels is given as a reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from flowrbc.validate._data import load_sample_pictures
from flowrbc.validate._results import TaskResult
from flowrbc.validate._training import Context, Variant

NAME = "image-reconstruction"
TITLE = "reconstruct image patches from a subset of their pixels"

_SSE = Variant("slot_set", 2, "none", "clean", (("slots", 8), ("slot_agg", "mean")), "SSE")
_DS = Variant("deepsets", 2, "none", "none", (("pooling", "mean"),), "Deep Sets (mean)")


@dataclass(frozen=True)
class Protocol:
    patch: int  # side of a square patch
    n_encoded: int  # pixels given to the encoder
    batch: int
    epochs: int
    steps: int
    lr: float
    width: int  # encoder width and code size
    variants: tuple[Variant, ...] = (_SSE, _DS)


PROTOCOLS = {
    "toy": Protocol(8, 16, 16, 2, 6, 1e-3, 16),
    "quick": Protocol(16, 64, 32, 10, 60, 1e-3, 64),
    "full": Protocol(32, 300, 64, 200, 100, 1e-3, 64),
}
N_FREQ = 4  # sin/cos frequencies of the decoder's coordinate features


def make_patches(pictures: list[np.ndarray], patch: int) -> np.ndarray:
    """Non-overlapping patches of every picture: (n_patches, patch², 3), row-major pixels."""
    out = []
    for img in pictures:
        h, w = (img.shape[0] // patch) * patch, (img.shape[1] // patch) * patch
        grid = img[:h, :w].reshape(h // patch, patch, w // patch, patch, 3).transpose(0, 2, 1, 3, 4)
        out.append(grid.reshape(-1, patch * patch, 3))
    return np.concatenate(out).astype(np.float32)


def patch_coords(patch: int) -> np.ndarray:
    """Pixel coordinates in [-1, 1], (patch², 2), matching ``make_patches``' order."""
    t = np.linspace(-1, 1, patch, dtype=np.float32)
    yy, xx = np.meshgrid(t, t, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def _autoencoder(encoder, code_dim: int, hidden: int = 128):
    import torch
    from torch import nn

    class PixelAutoencoder(nn.Module):
        """Set encoder -> code; (code, γ(coords)) -> colour, for every queried pixel."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            coord_dim = 2 + 4 * N_FREQ
            self.decoder = nn.Sequential(
                nn.Linear(code_dim + coord_dim, hidden), nn.ReLU(),
                nn.Linear(hidden, hidden), nn.ReLU(),
                nn.Linear(hidden, hidden), nn.ReLU(),
                nn.Linear(hidden, 3),
            )  # fmt: skip

        def code(self, pixels):
            return self.encoder(pixels)["code"]  # (B, code_dim)

        def code_chunked(self, pixels, chunks: int):
            """The same code from ``chunks`` pieces of the pixel set (mini-batch consistency)."""
            parts = torch.tensor_split(pixels, chunks, dim=1)
            enc = self.encoder
            if hasattr(enc, "init_state"):
                state = enc.init_state(pixels.shape[0])
                for part in parts:
                    state = enc.update(state, part)
                return enc.finalize(state)["code"]
            # Mean pooling: the count-weighted mean of the chunk embeddings is the set's mean.
            z = sum(enc.embed(p) * p.shape[1] for p in parts) / pixels.shape[1]
            return enc.decoder(z)["code"]

        def decode(self, code, coords):
            freqs = 2.0 ** torch.arange(N_FREQ, device=coords.device) * torch.pi
            ang = coords[..., None] * freqs  # (B, M, 2, F)
            gamma = torch.cat([coords, ang.sin().flatten(2), ang.cos().flatten(2)], dim=-1)
            z = code[:, None, :].expand(-1, coords.shape[1], -1)  # (B, M, code_dim)
            return self.decoder(torch.cat([z, gamma], dim=-1))  # (B, M, 3)

        def forward(self, pixels, coords):
            return self.decode(self.code(pixels), coords)

    return PixelAutoencoder()


def run(ctx: Context) -> TaskResult:
    import time

    import torch

    proto = PROTOCOLS[ctx.size]
    rng = np.random.default_rng(ctx.seed)
    patches = make_patches(load_sample_pictures(), proto.patch)  # (n, P², 3)
    order = rng.permutation(len(patches))
    n_test = len(patches) // 5
    test_p, val_p, train_p = order[:n_test], order[n_test : n_test + n_test // 2], order[n_test + n_test // 2 :]
    if ctx.size == "toy":
        train_p, val_p, test_p = train_p[:256], val_p[:64], test_p[:64]
    n_pix = proto.patch**2
    dev = ctx.torch_device
    colours = torch.from_numpy(patches).to(dev)  # (n, P², 3)
    coords = torch.from_numpy(patch_coords(proto.patch)).to(dev)  # (P², 2)

    def pixel_set(idx, pick):
        """Encoded pixels (B, n_encoded, 5) and all pixels' targets of patches ``idx``."""
        c = colours[idx]  # (B, P², 3)
        xy = coords[pick]  # (B, n_encoded, 2)
        rgb = torch.gather(c, 1, pick[..., None].expand(-1, -1, 3))
        return torch.cat([xy, rgb - 0.5], dim=-1), c

    def fixed(split):
        g = torch.Generator(device=dev)
        g.manual_seed(int(rng.integers(2**31)))
        idx = torch.from_numpy(split).to(dev)
        pick = torch.argsort(torch.rand(len(idx), n_pix, device=dev, generator=g), dim=1)[:, : proto.n_encoded]
        return pixel_set(idx, pick)

    val_x, val_y = fixed(val_p)
    test_x, test_y = fixed(test_p)
    train_t = torch.from_numpy(train_p).to(dev)
    all_coords = lambda b: coords.expand(b, -1, -1)  # noqa: E731

    def sample(gen):
        idx = train_t[torch.randint(0, len(train_t), (proto.batch,), device=dev, generator=gen)]
        pick = torch.argsort(torch.rand(proto.batch, n_pix, device=dev, generator=gen), dim=1)[:, : proto.n_encoded]
        return pixel_set(idx, pick)

    def loss_fn(model, batch):
        x, y = batch
        return torch.nn.functional.mse_loss(model(x, all_coords(len(x))), y)

    def mse(model, x, y, chunks: int = 0) -> tuple[float, torch.Tensor]:
        preds = []
        for i in range(0, len(x), 128):
            xb = x[i : i + 128]
            code = model.code_chunked(xb, chunks) if chunks else model.code(xb)
            preds.append(model.decode(code, all_coords(len(xb))))
        pred = torch.cat(preds)
        return float(torch.mean((pred - y) ** 2)), pred

    train_mean = patches[train_p].reshape(-1, 3).mean(axis=0)
    baseline = float(np.mean((patches[test_p] - train_mean) ** 2))
    patch_mean = float(torch.mean((test_y - (test_x[..., 2:] + 0.5).mean(dim=1, keepdim=True)) ** 2))

    result = TaskResult(
        task=NAME,
        title=TITLE,
        metric="test pixel MSE",
        higher_is_better=False,
        baseline_name="mean colour",
        data="scikit-learn sample images china.jpg + flower.jpg (offline)",
        real_data=False,
        protocol=(
            f"{proto.patch}×{proto.patch} patches ({len(train_p)} train / {len(val_p)} val / {len(test_p)} test), "
            f"{proto.n_encoded} of {n_pix} pixels encoded, all decoded; batch {proto.batch}, {proto.epochs} epochs × "
            f"{proto.steps} steps, Adam lr {proto.lr:g}, code size {proto.width}"
        ),
        paper_ref="",
        size=ctx.size,
        notes=[
            f"reference: patch-mean colour of the encoded pixels, MSE {patch_mean:.4g}",
            "chunked = the encoded pixels fed in 4 chunks; max|Δ| = largest difference to the whole-set reconstruction",
        ],
    )

    variants = ctx.select(list(proto.variants))
    ctx.plan(len(variants))
    for v in variants:
        t0 = time.perf_counter()
        encoder, cfg = ctx.build(v, in_features=5, outputs={"code": proto.width}, width=proto.width)
        torch.manual_seed(ctx.seed)
        model = _autoencoder(encoder, proto.width).to(dev)
        fit = ctx.train(
            model,
            sample,
            loss_fn,
            epochs=proto.epochs,
            steps=proto.steps,
            lr=proto.lr,
            evaluate=lambda m: {"score": mse(m, val_x, val_y)[0]},
            label=v.name(),
        )
        with torch.no_grad():
            metric, whole = mse(model, test_x, test_y)
            chunked, pieces = mse(model, test_x, test_y, chunks=4)
        gap = float((whole - pieces).abs().max())
        result.add_row(
            v.name(), cfg, metric, baseline, started=t0,
            extra={"best_epoch": fit.best_epoch, "mse_chunked": chunked, "max|Δ|": gap},
        )
        ctx.unit_done(f"{v.name()}: {metric:.4g}")
    return result
