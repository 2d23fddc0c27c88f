"""The cell bound: the Bayes-optimal prediction from the cell population, sex and age."""

import numpy as np
import pytest

from flowrbc.evaluation import paired
from flowrbc.synthetic.bound import cell_bound
from flowrbc.synthetic.reference import exact_population_reference, population_features
from flowrbc.synthetic.simulate import draw_patients, simulate_cohort


@pytest.fixture(scope="module")
def sim():
    return simulate_cohort(6000, 1, seed=21)  # the bound needs no cells: one per patient


def test_a_model_fitted_on_exact_populations_does_not_beat_the_bound(sim):
    from sklearn.ensemble import HistGradientBoostingRegressor

    X, s = population_features(draw_patients(len(sim.samples), 21)), sim.samples
    np.testing.assert_array_equal(X[:, :4], sim.populations["w"])  # the same patients as ``sim``
    np.testing.assert_array_equal(X[:, 20], (s["sex"] == "F").to_numpy(float))
    y = s["hematocrit"].to_numpy()
    train, test = slice(0, 4000), slice(4000, None)
    gbm = HistGradientBoostingRegressor(max_iter=300, learning_rate=0.05, random_state=0).fit(X[train], y[train])
    d = paired((gbm.predict(X[test]) - y[test]) ** 2, (s["bound_hematocrit"].to_numpy()[test] - y[test]) ** 2)
    assert d["diff"] > -2 * d["se"]  # the fitted model is not better than the bound
    assert d["diff"] > 0.2  # and at this size clearly worse: the bound is not a loose number


def test_the_bound_error_is_what_it_claims(sim):
    s = sim.samples
    err2 = (s["hematocrit"] - s["bound_hematocrit"]).to_numpy() ** 2
    var = s["bound_hematocrit_sd"].to_numpy() ** 2
    d = paired(err2, var)  # E[(y − E[y|pop])²] = E[Var(y|pop)]
    assert abs(d["diff"]) < 3 * d["se"]
    p = s["bound_anemia_probability"].to_numpy()
    a = s["anemia"].to_numpy(float)
    assert abs(a.mean() - p.mean()) < 3 * np.sqrt(np.mean(p * (1 - p)) / len(p))  # calibrated on average
    for lo, hi in ((0.0, 0.2), (0.2, 0.8), (0.8, 1.0)):
        m = (p >= lo) & (p < hi)
        assert abs(a[m].mean() - p[m].mean()) < 3 * np.sqrt(np.mean(p[m] * (1 - p[m])) / m.sum()) + 1e-3


def test_the_latent_oracle_claims_less_error_than_the_cells_allow(sim):
    b = sim.bound
    assert b["latent_hematocrit_mse"] < b["bound_hematocrit_mse"] - 1.0
    assert b["latent_anemia_accuracy"] > b["bound_anemia_accuracy"]
    assert 0.8 < b["bound_anemia_accuracy"] < 1.0


def test_the_bound_sees_only_the_population(sim):
    s = sim.samples
    again = cell_bound(sim.record)
    np.testing.assert_array_equal(again["hematocrit"], s["bound_hematocrit"])
    # patients with the same population, sex and age get the same prediction, whatever the
    # latents the cells do not show: the RBC count, and the condition and severity within a
    # look (healthy, thalassemia trait and chronic disease look alike; a transfusion's severity
    # is unseen)
    codes = {name: k for k, name in enumerate(sim.record.conditions)}
    for condition, relabel in (("beta_thal_trait", ("healthy", "chronic_disease")), ("transfusion", ())):
        i = int(np.flatnonzero(sim.record.condition_name == condition)[0])
        rec = sim.record.take(np.full(3, i))
        rec.rbc[:], rec.rbc_mean[:] = (4.0, 5.0, 6.0), (4.1, 5.1, 6.1)
        rec.severity[:] = (0.1, 0.5, 0.9)
        for j, name in enumerate(relabel, 1):
            rec.condition[j] = codes[name]
        out = cell_bound(rec)
        assert np.ptp(out["hematocrit"]) == 0 and np.ptp(out["anemia_probability"]) == 0
        assert out["hematocrit"][0] == pytest.approx(s["bound_hematocrit"].iloc[i], rel=1e-12)
        assert np.isfinite(out["hematocrit_sd"]).all()


def test_the_exact_population_reference_scores_the_fresh_patients_it_is_given():
    """Fitted on the training split of one seed's patients, it predicts another seed's fresh
    patients far better than their mean; given the wrong fresh seed (other patients'
    populations) it refuses, since the recorded patients do not line up with the rows."""
    from flowrbc.io.cohort import assign_splits

    train = simulate_cohort(1500, 1, seed=5).samples
    train["split"] = assign_splits(len(train), 5)
    fresh = simulate_cohort(800, 1, seed=6).samples
    y = fresh["hematocrit"].to_numpy()
    right = exact_population_reference(train, 5, fresh, 6)
    assert set(right) == {"hematocrit", "anemia"}
    assert float(np.mean((right["hematocrit"] - y) ** 2)) < 0.5 * y.var()
    with pytest.raises(ValueError, match="seed 7"):
        exact_population_reference(train, 5, fresh, 7)
    with pytest.raises(ValueError, match="seed 4"):
        exact_population_reference(train, 4, fresh, 6)
