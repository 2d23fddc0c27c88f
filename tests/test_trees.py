"""Boosted trees read out of scikit-learn and applied in numpy give scikit-learn's answers."""

import numpy as np
import pytest
import torch
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from flowrbc.trees import TreeEnsemble


def _data(seed=0, n=1200):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    X[rng.random(X.shape) < 0.1] = np.nan  # missing values are routed like the fit routed them
    y = 2 * np.nan_to_num(X[:, 0]) + np.nan_to_num(X[:, 1]) ** 2 + rng.normal(size=n)
    return X, y


def test_regressor_matches_sklearn_with_missing_values():
    X, y = _data()
    model = HistGradientBoostingRegressor(max_iter=60, max_leaf_nodes=15, early_stopping=False).fit(X[:900], y[:900])
    trees = TreeEnsemble.from_sklearn(model)
    test = X[900:].copy()
    test[:20, 3] = np.nan  # a column the fit saw few missing values in
    assert len(trees.roots) == 60
    np.testing.assert_allclose(trees.predict_raw(test), model.predict(test), rtol=0, atol=1e-10)


def test_classifier_raw_score_is_the_decision_function():
    X, y = _data(1)
    model = HistGradientBoostingClassifier(max_iter=40, early_stopping=False).fit(X[:900], (y[:900] > 1).astype(int))
    trees = TreeEnsemble.from_sklearn(model)
    np.testing.assert_allclose(trees.predict_raw(X[900:]), model.decision_function(X[900:]), rtol=0, atol=1e-10)


def test_state_round_trip_loads_as_weights_only(tmp_path):
    X, y = _data(2)
    model = HistGradientBoostingRegressor(max_iter=20, early_stopping=False).fit(X, y)
    torch.save(TreeEnsemble.from_sklearn(model).to_state(), tmp_path / "trees.pt")
    back = TreeEnsemble.from_state(torch.load(tmp_path / "trees.pt", weights_only=True))
    np.testing.assert_allclose(back.predict_raw(X), model.predict(X), rtol=0, atol=1e-10)


def test_multiclass_is_refused():
    X, y = _data(3)
    model = HistGradientBoostingClassifier(max_iter=3, early_stopping=False).fit(X, np.digitize(y, [0, 2]))
    with pytest.raises(ValueError, match="single-output"):
        TreeEnsemble.from_sklearn(model)
