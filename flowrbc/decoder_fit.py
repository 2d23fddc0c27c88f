r"""Reading every cell: the decoder refitted on whole-patient embeddings after the epochs.

The encoder trains on small random sets (``TrainConfig.set_size`` cells, redrawn every step),
which is cheap and regularises. But its decoder then learns from the embeddings of 250-cell
sets, whose sampling noise it averages away: fed the embedding of all of a patient's cells, it
reads a sharper input with weights made for a blurred one, and gains nothing (5,000 fresh
patients of 10,000 cells: hematocrit MSE 9.448 with ten sets of 250, 9.393 with every cell).

``fit_decoder`` keeps the encoder and refits the decoder on the embedding of each training
patient's every cell (``whole_embeddings``: exact, set norm included, memory bounded by
``flowrbc.inputs.whole_sets``), from the trained decoder's weights, the best epoch chosen on
the validation split's whole-set embeddings. The refitted decoder is kept only where it beats
the trained one on the validation patients by more than ``MARGIN_SE`` standard errors of their
paired per-patient losses; otherwise the trained decoder stays. Either way the predictor then
reads every cell (``Predictor.set_size`` None). Without that rule, at the default size (1,000
cells, whose decoder already reads the index features of every cell) a refit chosen on 300
validation patients by a hair cost one seed +0.085 +- 0.026 hematocrit MSE on fresh patients.

Measured (``benchmarks/RESULTS.md``, "Every cell counts"), the set model alone against the
moments baseline on 5,000 fresh patients, 3,500 training patients x 10,000 cells: +0.35 +- 0.11
with ten sets of 250 -> −0.50 +- 0.12 with every cell and the refitted decoder. At the default
size (1,400 x 1,000, the decoder reading the index features) the refit is not kept at seeds
0-2, and every-cell predictions equal the sets' within 0.001. The cost is one forward pass over
every training and validation cell plus up to a few hundred epochs of a small MLP on cached
embeddings (68 s on one thread at 4,250 x 10,000 cells, 4 s at the default size).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from flowrbc.inputs import whole_sets

MAX_EPOCHS = 300  # passes over the training embeddings; patience ends it sooner
PATIENCE = 30  # epochs without a better validation score before stopping
MARGIN_SE = 2.0  # the refit is kept where it lowers the validation loss by more than this many paired SEs
BATCH = 64  # embeddings per step


@dataclass
class DecoderFit:
    """What refitting the decoder did: validation score (the training loss summed over
    targets) of the trained decoder and of the refitted one, both on whole-set embeddings."""

    val_before: float
    val_after: float  # of the decoder kept
    best_epoch: int  # the refit's best epoch on validation (0: none beat the trained decoder)
    epochs: int
    wall_s: float
    kept: bool  # the refitted decoder was kept (better by more than MARGIN_SE paired SEs)
    gain: float  # validation loss: trained decoder − the refit's best, mean over patients
    gain_se: float  # its paired SE
    history: list[float] = field(default_factory=list)  # validation score per epoch

    def to_dict(self) -> dict:
        return {"val_before": self.val_before, "val_after": self.val_after, "best_epoch": self.best_epoch,
                "epochs": self.epochs, "wall_s": self.wall_s, "kept": self.kept, "gain": self.gain,
                "gain_se": self.gain_se}


@torch.no_grad()
def whole_embeddings(model: torch.nn.Module, X: torch.Tensor, offsets: torch.Tensor, idx: np.ndarray,
                     precision: str = "auto") -> torch.Tensor:
    """``model.embed`` of every cell of each sample ``idx`` in one set -> (len(idx), D) float32."""
    model.eval()
    idx_t = torch.as_tensor(np.asarray(idx), dtype=torch.long, device=X.device)
    Z = None
    for at, z in whole_sets(model, X, offsets, idx_t, precision=precision):
        Z = torch.zeros(len(idx_t), z.shape[1], device=X.device) if Z is None else Z
        Z[at] = z.float()
    return Z


def fit_decoder(model: torch.nn.Module, data, *, lr: float, weight_decay: float, covariate_dropout: float,
                seed: int, precision: str = "auto", max_epochs: int = MAX_EPOCHS,
                patience: int = PATIENCE) -> DecoderFit:
    """Refit ``model.decoder`` in place on whole-set embeddings of ``data``'s training split
    (``flowrbc.prepare.TrainingData``), with its loss and covariate dropout; the weights with
    the best validation score on whole-set embeddings are kept (the trained ones if none beats
    them, or beaten by no more than ``MARGIN_SE`` paired SEs)."""
    t0 = time.perf_counter()
    train, val = data.split["train"], data.split["val"]
    device = data.prep.X.device
    Z_train = whole_embeddings(model, data.prep.X, data.prep.offsets, train, precision)  # (n_train, D)
    Z_val = whole_embeddings(model, data.prep.X, data.prep.offsets, val, precision)  # (n_val, D)
    train_t = torch.as_tensor(train, device=device)
    val_t = torch.as_tensor(val, device=device)
    val_cov = data.decoder_inputs(val_t)

    def losses() -> torch.Tensor:
        with torch.no_grad():
            return data.sample_losses(model.decode(Z_val, val_cov), val_t)  # (n_val,)

    def score() -> float:
        return float(losses().mean())

    decoder = model.decoder
    trained = copy.deepcopy(decoder.state_dict())
    before_each = losses()
    best_state, best, best_epoch = trained, float(before_each.mean()), 0
    before = best
    optimizer = torch.optim.Adam(decoder.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator(device=device).manual_seed(seed)
    history, epoch = [], 0
    for epoch in range(1, max_epochs + 1):
        decoder.train()
        order = torch.randperm(len(train_t), generator=generator, device=device)  # (n_train,)
        for lo in range(0, len(order), BATCH):
            at = order[lo : lo + BATCH]
            idx = train_t[at]
            out = model.decode(Z_train[at], data.decoder_inputs(idx, covariate_dropout, generator))
            loss = data.loss(out, idx)[0]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        decoder.eval()
        value = score()
        history.append(value)
        if value < best:
            best_state, best, best_epoch = copy.deepcopy(decoder.state_dict()), value, epoch
        elif epoch - best_epoch >= patience:
            break
    decoder.load_state_dict(best_state)
    gain_each = before_each - losses()  # (n_val,) paired: how much lower each patient's loss is
    gain = float(gain_each.mean())
    gain_se = float(gain_each.std() / len(gain_each) ** 0.5) if len(gain_each) > 1 else float("inf")
    kept = best_epoch > 0 and gain > MARGIN_SE * gain_se
    if not kept:
        decoder.load_state_dict(trained)
    model.eval()
    return DecoderFit(before, best if kept else before, best_epoch, epoch, time.perf_counter() - t0, kept, gain,
                      gain_se, history)
