"""Gradient-boosted regression trees as numpy arrays: fitted by scikit-learn, applied without it.

``TreeEnsemble.from_sklearn`` reads a fitted ``HistGradientBoostingRegressor`` (or the
binary ``...Classifier``) into flat node arrays; ``predict_raw`` evaluates every tree for
every row at once, one tree level per step (vectorised over rows x trees)::

    raw(x) = b + sum_t value_t(leaf_t(x))

A node sends ``x`` left when ``x[f] <= threshold`` and, for a missing value (NaN), where
the fit routed missing values. For the regressor ``raw`` is the prediction; for the binary
classifier it is the logit. numpy only: ``flowrbc predict`` applies the trees this way, so
the predict path never imports scikit-learn. The checkpoint holds ``to_state()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TreeEnsemble:
    feature: np.ndarray  # (n_nodes,) int64 split feature; -1 at a leaf
    threshold: np.ndarray  # (n_nodes,) float64
    missing_left: np.ndarray  # (n_nodes,) bool: NaN goes left
    left: np.ndarray  # (n_nodes,) int64 node index (global); a leaf points to itself
    right: np.ndarray  # (n_nodes,) int64
    value: np.ndarray  # (n_nodes,) float64, leaf values (shrinkage included)
    roots: np.ndarray  # (n_trees,) int64
    base: float  # the constant the boosting started from
    depth: int  # deepest leaf

    @classmethod
    def from_sklearn(cls, model) -> TreeEnsemble:
        """A fitted HistGradientBoostingRegressor or binary HistGradientBoostingClassifier."""
        trees = [t for stage in model._predictors for t in stage]  # one tree per stage (1 output)
        if any(len(stage) != 1 for stage in model._predictors):
            raise ValueError("trees: only single-output boosting (regression, binary) is supported")
        parts, roots, start = [], [], 0
        for tree in trees:
            nodes = tree.nodes
            if nodes["is_categorical"].any():
                raise ValueError("trees: categorical splits are not supported")
            leaf = nodes["is_leaf"].astype(bool)
            own = np.arange(len(nodes)) + start
            parts.append((np.where(leaf, -1, nodes["feature_idx"]).astype(np.int64),
                          nodes["num_threshold"].astype(np.float64),
                          nodes["missing_go_to_left"].astype(bool),
                          np.where(leaf, own, nodes["left"].astype(np.int64) + start),
                          np.where(leaf, own, nodes["right"].astype(np.int64) + start),
                          np.where(leaf, nodes["value"], 0.0).astype(np.float64),
                          int(nodes["depth"].max())))
            roots.append(start)
            start += len(nodes)
        cols = list(zip(*parts))
        return cls(*(np.concatenate(c) for c in cols[:6]), roots=np.asarray(roots, dtype=np.int64),
                   base=float(np.ravel(model._baseline_prediction)[0]), depth=max(cols[6], default=0))

    def predict_raw(self, X: np.ndarray) -> np.ndarray:
        """(n, n_features) -> (n,) raw scores."""
        X = np.asarray(X, dtype=np.float64)
        rows = np.arange(len(X))[:, None]  # (n, 1)
        node = np.broadcast_to(self.roots, (len(X), len(self.roots))).copy()  # (n, T)
        for _ in range(self.depth):
            f = self.feature[node]  # (n, T)
            x = X[rows, np.maximum(f, 0)]
            go_left = np.where(np.isnan(x), self.missing_left[node], x <= self.threshold[node])
            node = np.where(go_left, self.left[node], self.right[node])  # leaves point to themselves
        return self.base + self.value[node].sum(axis=1)

    def to_state(self) -> dict:
        """Tensors and numbers only: loads with ``torch.load(weights_only=True)``."""
        import torch

        arrays = ("feature", "threshold", "missing_left", "left", "right", "value", "roots")
        return {**{k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in arrays},
                "base": self.base, "depth": self.depth}

    @classmethod
    def from_state(cls, state: dict) -> TreeEnsemble:
        arrays = {k: np.asarray(state[k].numpy() if hasattr(state[k], "numpy") else state[k])
                  for k in ("feature", "threshold", "missing_left", "left", "right", "value", "roots")}
        return cls(**arrays, base=float(state["base"]), depth=int(state["depth"]))
