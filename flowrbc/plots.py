"""Run plots (PNG, matplotlib Agg, imported on use): learning curves, predicted vs true
hematocrit with the conformal band, anemia reliability diagram. Written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    from flowrbc.checkpoint import atomic_write_bytes

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    _figure().close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def learning_curves(history: list[dict], path) -> Path:
    """Training loss and every validation metric per epoch."""
    plt = _figure()
    keys = [k for k in history[0] if k not in ("epoch", "lr", "time_s")] if history else []
    fig, axes = plt.subplots(1, max(1, len(keys)), figsize=(3.6 * max(1, len(keys)), 3.2), squeeze=False)
    epochs = [h["epoch"] for h in history]
    for ax, key in zip(axes[0], keys):
        ax.plot(epochs, [h.get(key, np.nan) for h in history], marker=".")
        ax.set_title(key)
        ax.set_xlabel("epoch")
    return _save(fig, path)


def predicted_vs_true(y: np.ndarray, pred: np.ndarray, halfwidth: float, path, name: str = "hematocrit (%)") -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
    grid = np.array([lo, hi])
    ax.scatter(y, pred, s=6, alpha=0.6)
    ax.plot(grid, grid, color="k", lw=1)
    if np.isfinite(halfwidth):
        ax.fill_between(grid, grid - halfwidth, grid + halfwidth, color="C1", alpha=0.15,
                        label=f"±{halfwidth:.2f} conformal")
        ax.legend(loc="upper left")
    ax.set_xlabel(f"true {name}")
    ax.set_ylabel(f"predicted {name}")
    return _save(fig, path)


def reliability_diagram(y: np.ndarray, prob: np.ndarray, path, bins: int = 10) -> Path:
    from flowrbc.metrics import reliability_curve

    plt = _figure()
    curve = reliability_curve(y, prob, bins)
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], color="k", lw=1)
    ax.plot(curve["predicted"], curve["observed"], marker="o")
    ax.set_xlabel("predicted probability (anemia)")
    ax.set_ylabel("observed frequency")
    return _save(fig, path)


def embedding_umap(coords: np.ndarray, color: np.ndarray, path, label: str = "hematocrit (%)") -> Path:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    sc = ax.scatter(coords[:, 0], coords[:, 1], c=color, s=6, cmap="viridis")
    fig.colorbar(sc, ax=ax, label=label)
    ax.set_xlabel("UMAP 1")
    ax.set_ylabel("UMAP 2")
    return _save(fig, path)
