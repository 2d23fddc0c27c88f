r"""The default predictor of a regression target: the set model averaged with two models of the
sample's index features.

For a patient with cells :math:`X`, index features :math:`f(X)`: the analyser indices (MCV,
RDW, HDW, percentiles, fractions: ``flowrbc.metrics.moment_features``) and the shape of the
log-scale distributions (skewness, kurtosis, tail percentiles, the volume-hemoglobin
correlation: ``flowrbc.metrics.shape_features``), and covariates :math:`c`:

.. math::  \hat y = w\,\hat y_{\text{set}}(X, c, f) + \tfrac{1 - w}{2}\big(\hat y_{\text{mlp}}(f, c) + \hat y_{\text{trees}}(f, c)\big),
   \qquad w = \tfrac12 \ (\texttt{SET\_WEIGHT})

- :math:`\hat y_{\text{set}}`: the trained set model (draw-averaged); its decoder reads the
  encoded index features beside the embedding and the covariates (``IndexInputs``; a run with
  ``index_inputs=False`` gives :math:`\hat y_{\text{set}}(X, c)`);
- :math:`\hat y_{\text{mlp}}`: the mean of ``members`` small MLPs on the standardised features and
  the encoded covariates, each stopped at its best validation epoch (``StackedMLP``: the
  members train together as one batched module);
- :math:`\hat y_{\text{trees}}`: gradient-boosted trees on the same features and the raw
  covariates (the moments baseline's grid, chosen on validation), applied in numpy
  (``flowrbc.trees``).

Why the shape features: the analyser indices alone miss the tails and asymmetry that
separate, say, a hypochromic subpopulation from a uniformly shifted one; measured on
experiment cohorts (seeds 777/778, 1,400 training patients, 5,000 fresh), without -> with
them: trees 10.58 -> 10.17 and the whole predictor 9.82 -> 9.61 hematocrit MSE.

Why a fixed weight and no fitted one: the members make correlated but different errors,
and with ~300 validation patients a fitted weight is mostly noise (measured on 5,000 fresh
patients of an experiment seed: validation picked 0.9 for the set model, the best weight
there was 0.5). The weight was chosen once, on four experiment cohorts (781, 783, 785, 787;
1,400 training patients, 5,000 fresh each) with the set model reading the index features:
against :math:`w = 1/3` (the three averaged equally), :math:`w = 1/2` is −0.052, −0.042,
−0.031, +0.003 (± 0.012) hematocrit MSE, pooled −0.030 ± 0.006; :math:`w = 0.6` and
:math:`2/3` tie with it (pooled −0.005 ± 0.004, −0.003 ± 0.006). With a covariate unknown
the set model predicts alone (its calibration for unknown covariates applies); binary
targets always come from the set model. Checkpoints store the weight they were calibrated
with (those without one used 1/3).
numpy and torch only: the predict path uses this module.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn


class StackedMLP(nn.Module):
    """``members`` independent MLPs run as one module: (K, B, F) -> (K, B).

    Layer l of member k: :math:`h \\leftarrow \\mathrm{relu}(h W_{lk} + b_{lk})` (times a
    dropout mask ``keep[l]`` when training), a linear output; one ``baddbmm`` per layer
    serves all members.
    """

    def __init__(self, members: int, in_features: int, width: int = 128, depth: int = 2,
                 dropout: float = 0.1, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.config = {"members": members, "in_features": in_features, "width": width, "depth": depth,
                       "dropout": dropout}
        sizes = [in_features] + [width] * depth + [1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default init, per member
            self.weights.append(nn.Parameter(torch.empty(members, fan_in, fan_out).uniform_(-bound, bound,
                                                                                             generator=generator)))
            self.biases.append(nn.Parameter(torch.empty(members, 1, fan_out).uniform_(-bound, bound,
                                                                                       generator=generator)))

    def forward(self, x: Tensor, keep: list[Tensor] | None = None) -> Tensor:
        """``keep``: per hidden layer a (K, B, width) dropout mask of 0 and 1 / (1 − p)
        (``dropout_masks``); None (evaluation): no dropout."""
        h = x  # (K, B, F)
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = torch.baddbmm(b, h, w)  # (K, B, width) or (K, B, 1)
            if i < last:
                h = torch.relu(h) if keep is None else torch.relu(h) * keep[i]
        return h.squeeze(-1)  # (K, B)

    def dropout_masks(self, batch: int, rng: np.random.Generator) -> list[Tensor]:
        """Inverted-dropout masks for one step: each unit kept with probability 1 − p.

        Each unit compares a 16-bit slice of numpy's PCG64 output (64-bit draws viewed as four
        16-bit integers) with ``round(p * 65536)``; the bool mask becomes float through a uint8
        view. Measured for 5 members x 64 x 128, two layers, one thread: 76 µs against 340 µs
        for 16-bit draws and a bool-to-float cast (torch's CPU generator was 7x slower still)."""
        c = self.config
        cut = round(c["dropout"] * 65536)  # P(u < cut) = p to 1.5e-5
        scale = 1.0 / (1.0 - cut / 65536)
        shape = (c["depth"], c["members"], batch, c["width"])
        words = -(-math.prod(shape) // 4)  # 64-bit draws, four units each
        u = rng.integers(0, 2**64, size=words, dtype=np.uint64).view(np.uint16)[: math.prod(shape)]
        keep = torch.from_numpy((u >= cut).reshape(shape)).view(torch.uint8).float().mul_(scale)
        return list(keep.unbind(0))  # depth x (K, B, width)


SET_WEIGHT = 0.5  # w above: the set model's share of a regression target's prediction

SAMPLES_SEEN = 210_000  # per member: 150 epochs of 1,400 patients (13 s on one CPU thread);
# larger cohorts get fewer epochs (at least 10), so the fit stays within seconds


def fit_stacked_mlp(Z: np.ndarray, y: np.ndarray, train: np.ndarray, val: np.ndarray, *, members: int = 5,
                    epochs: int | None = None, batch_size: int = 64, lr: float = 1e-3, weight_decay: float = 1e-3,
                    seed: int = 0) -> StackedMLP:
    """Fit on rows ``train`` of (Z (n, F), y (n,) standardised); each member keeps the weights of
    its best validation epoch (rows ``val``). Every member sees its own minibatch order.
    ``epochs`` None: ``SAMPLES_SEEN / len(train)`` clipped to [10, 150]."""
    if epochs is None:
        epochs = int(min(150, max(10, SAMPLES_SEEN // max(len(train), 1))))
    g = torch.Generator().manual_seed(seed)  # initial weights, then minibatch orders
    rng = np.random.default_rng(seed)  # dropout masks
    net = StackedMLP(members, Z.shape[1], generator=g)  # the global generator untouched: training may use it
    Xt = torch.as_tensor(Z[train], dtype=torch.float32)
    yt = torch.as_tensor(y[train], dtype=torch.float32)
    Xv = torch.as_tensor(Z[val], dtype=torch.float32).expand(members, -1, -1)  # (K, n_val, F)
    yv = torch.as_tensor(y[val], dtype=torch.float32)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    best = torch.full((members,), math.inf)
    best_state = [p.detach().clone() for p in net.parameters()]
    n = len(Xt)
    for _ in range(epochs):
        order = torch.stack([torch.randperm(n, generator=g) for _ in range(members)])  # (K, n)
        for lo in range(0, n, batch_size):
            b = order[:, lo : lo + batch_size]  # (K, b)
            keep = net.dropout_masks(b.shape[1], rng)
            loss = ((net(Xt[b], keep) - yt[b]) ** 2).mean(1).sum()  # members are independent: sum of means
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            score = ((net(Xv) - yv) ** 2).mean(1)  # (K,)
            better = score < best
            best = torch.where(better, score, best)
            for kept, p in zip(best_state, net.parameters()):
                kept[better] = p.detach()[better]
    with torch.no_grad():
        for kept, p in zip(best_state, net.parameters()):
            p.copy_(kept)
    return net.eval()


def index_features(volume: np.ndarray, hemoglobin: np.ndarray, offsets: np.ndarray,
                   moments: tuple[np.ndarray, list[str]] | None = None) -> tuple[np.ndarray, list[str]]:
    """The index features of each sample's cells split by ``offsets``: the moment features, then
    the shape features -> ``(F (n_samples, ·), names)``. ``moments``: ``moment_features``'
    ``(array, names)`` when the caller has them already."""
    from flowrbc.metrics import moment_features, shape_features

    F, names = moment_features(volume, hemoglobin, offsets) if moments is None else moments
    S, shape_names = shape_features(volume, hemoglobin, offsets)
    return np.concatenate([F, S], axis=1), list(names) + shape_names


def standardiser(F: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and SD of each column of ``F`` over ``rows``, NaN ignored; an all-NaN or constant
    column (one-cell samples only) gets mean 0, SD 1. -> ((F,), (F,))"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nan_to_num(np.nanmean(F[rows], axis=0))
        sd = np.nanstd(F[rows], axis=0)
    return mean, np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)


@dataclass
class IndexInputs:
    """The index features as extra decoder inputs of the set model, after the covariates:
    :math:`\\mathrm{clip}((f - \\mu) / \\sigma, \\pm 6)` with the training split's mean and SD,
    NaN -> 0. The set model then learns what the cells add to the indices; its embedding
    sees a 250-cell draw, the indices all of the sample's cells.

    Measured on experiment cohorts 781 and 783 (1,400 training patients, 5,000 fresh), without
    -> with these inputs: set model alone 10.23 -> 9.38 and 10.57 -> 9.86 hematocrit MSE, the
    whole predictor 9.63 -> 9.44 and 9.93 -> 9.85 (benchmarks/RESULTS.md)."""

    names: list[str]
    mean: np.ndarray  # (F,)
    sd: np.ndarray  # (F,)

    @classmethod
    def fit(cls, F: np.ndarray, names: list[str], train: np.ndarray) -> IndexInputs:
        return cls(list(names), *standardiser(F, train))

    def encode(self, F: np.ndarray) -> np.ndarray:
        """(n, F) index features -> (n, F) float32 decoder inputs."""
        Z = np.clip((F - self.mean) / self.sd, -6.0, 6.0)
        return np.nan_to_num(Z, nan=0.0).astype(np.float32)

    def to_state(self) -> dict:
        return {"names": list(self.names), "mean": torch.from_numpy(self.mean.copy()),
                "sd": torch.from_numpy(self.sd.copy())}

    @classmethod
    def from_state(cls, state: dict | None) -> IndexInputs | None:
        if not state:
            return None
        return cls(list(state["names"]), state["mean"].numpy().astype(np.float64),
                   state["sd"].numpy().astype(np.float64))


@dataclass
class IndexModels:
    """The two index members of each regression target, and what they read.

    Features ``F``: the moment features, then (``shape``) the shape features
    (``flowrbc.predictor.Predictor.index_features``).
    Trees read ``[F, raw covariates (NaN = unknown)]``; the MLPs read
    ``[(F − mean) / sd, encoded covariates]`` (0 = unknown, NaN -> 0)."""

    feature_names: list[str]
    mean: np.ndarray  # (F,) training mean of the features
    sd: np.ndarray  # (F,)
    members: dict[str, dict]  # target -> {"mlp": StackedMLP, "y_mean", "y_std", "trees": TreeEnsemble}
    shape: bool = True  # False: moment features only (members fitted before the shape features)
    set_weight: float = SET_WEIGHT  # the set model's share in ``blend``

    def mlp_inputs(self, F: np.ndarray, cov_encoded: np.ndarray) -> np.ndarray:
        Z = np.concatenate([(F - self.mean) / self.sd, cov_encoded], axis=1)  # (n, F + k)
        return np.nan_to_num(Z, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)

    @torch.no_grad()
    def predict(self, F: np.ndarray, cov_raw: np.ndarray, cov_encoded: np.ndarray) -> dict[str, np.ndarray]:
        """Per target (n,): the mean of the MLP ensemble's and the trees' predictions."""
        Z = torch.from_numpy(self.mlp_inputs(F, cov_encoded))
        T = np.concatenate([F, cov_raw], axis=1)
        out = {}
        for name, m in self.members.items():
            mlp = m["mlp"](Z.expand(m["mlp"].config["members"], -1, -1)).mean(0).numpy() * m["y_std"] + m["y_mean"]
            out[name] = 0.5 * (mlp.astype(np.float64) + m["trees"].predict_raw(T))
        return out

    def blend(self, set_pred: dict[str, np.ndarray], F: np.ndarray, cov_raw: np.ndarray,
              cov_encoded: np.ndarray) -> dict[str, np.ndarray]:
        """``set_pred`` with each regression target replaced by
        ``w * set + (1 - w) * (mlp + trees) / 2``, ``w = set_weight``."""
        index = self.predict(F, cov_raw, cov_encoded)
        w = self.set_weight
        return {k: w * np.asarray(v) + (1.0 - w) * index[k] if k in index else v for k, v in set_pred.items()}

    def to_state(self) -> dict:
        return {"feature_names": list(self.feature_names), "shape": self.shape, "set_weight": self.set_weight,
                "mean": torch.from_numpy(self.mean.copy()),
                "sd": torch.from_numpy(self.sd.copy()),
                "members": {k: {"mlp_config": dict(m["mlp"].config), "mlp_state": m["mlp"].state_dict(),
                                "y_mean": m["y_mean"], "y_std": m["y_std"], "trees": m["trees"].to_state()}
                            for k, m in self.members.items()}}

    @classmethod
    def from_state(cls, state: dict | None) -> IndexModels | None:
        if not state:
            return None
        from flowrbc.trees import TreeEnsemble

        members = {}
        for name, m in state["members"].items():
            mlp = StackedMLP(**m["mlp_config"])
            mlp.load_state_dict(m["mlp_state"])
            members[name] = {"mlp": mlp.eval(), "y_mean": float(m["y_mean"]), "y_std": float(m["y_std"]),
                             "trees": TreeEnsemble.from_state(m["trees"])}
        return cls(list(state["feature_names"]), state["mean"].numpy().astype(np.float64),
                   state["sd"].numpy().astype(np.float64), members, shape=bool(state["shape"]),
                   set_weight=float(state["set_weight"]))


def fit_index_models(F: np.ndarray, names: list[str], cov_raw: np.ndarray, cov_encoded: np.ndarray,
                     truth: dict[str, np.ndarray], specs: dict[str, dict], train: np.ndarray, val: np.ndarray,
                     seed: int = 0) -> IndexModels:
    """Index members for every regression target of ``specs`` from features ``F`` (n, ·)
    (``flowrbc.predictor.Predictor.index_features``) named ``names``: MLPs and trees (the moments baseline's grid)
    fitted on rows ``train``, stopped or chosen on ``val``."""
    from flowrbc.metrics import fit_moment_baseline
    from flowrbc.trees import TreeEnsemble

    index = IndexModels(list(names), *standardiser(F, train), {})
    Z = index.mlp_inputs(F, cov_encoded)
    regression = {name: truth[name] for name, spec in specs.items() if spec["kind"] == "regression"}
    rows = np.arange(len(F))
    trees = fit_moment_baseline(np.concatenate([F, cov_raw], axis=1), regression, np.isin(rows, train),
                                np.isin(rows, val), list(names), seed=seed)
    for name, y in regression.items():
        tr, va = train[np.isfinite(y[train])], val[np.isfinite(y[val])]
        z = (y - specs[name]["mean"]) / specs[name]["std"]
        mlp = fit_stacked_mlp(Z, z, tr, va, seed=seed)
        index.members[name] = {"mlp": mlp, "y_mean": specs[name]["mean"], "y_std": specs[name]["std"],
                               "trees": TreeEnsemble.from_sklearn(trees.models[name])}
    return index
