"""The synthetic cohort follows the literature values it is built from."""

import hashlib

import numpy as np
import pytest

from flowrbc.synthetic.simulate import CONDITIONS, draw_patients, mixture_indices, simulate_cohort, summary_table


@pytest.fixture(scope="module")
def big():
    # many patients, few cells: patient-level statistics
    return simulate_cohort(6000, 20, seed=11)


def _group(sim, condition, sex=None):
    s = sim.samples
    m = s["condition"] == condition
    if sex:
        m &= s["sex"] == sex
    return s[m]


@pytest.mark.parametrize("sex,rbc,mcv,rdw", [("M", (4.99, 0.36), (87.7, 3.3), (12.8, 0.5)),
                                             ("F", (4.45, 0.27), (86.6, 4.1), (12.9, 0.6))])
def test_healthy_reference_values(big, sex, rbc, mcv, rdw):
    h = _group(big, "healthy", sex)
    assert len(h) > 1000
    for col, (mean, sd) in (("rbc_count", rbc), ("mcv", mcv), ("rdw", rdw)):
        assert abs(h[col].mean() - mean) < 0.25 * sd, col
        assert 0.7 * sd < h[col].std() < 1.4 * sd, col
    assert 27 < h["mch"].mean() < 33 and 32 < h["mchc"].mean() < 36
    assert 0.005 <= h["retic_fraction"].median() <= 0.015


def test_healthy_hematocrit_matches_reference(big):
    # the reference Hct (43.75 +- 2.99 men, 38.49 +- 2.21 women) follows from RBC, MCV and their correlation
    for sex, (mean, sd) in (("M", (43.75, 2.99)), ("F", (38.49, 2.21))):
        h = _group(big, "healthy", sex)["hematocrit"]
        assert abs(h.mean() - mean) < 0.5 and abs(h.std() - sd) < 0.5


def test_conditions(big):
    thal = _group(big, "beta_thal_trait")
    assert 63 <= thal["mcv"].median() <= 74
    assert 5.0 <= thal["rbc_count"].median() <= 6.2
    mentzer = thal["mcv"] / thal["rbc_count"]
    assert mentzer.median() < 13 and (mentzer < 13).mean() > 0.5
    iron = _group(big, "iron_deficiency")
    assert iron["rdw"].mean() > 15 and (iron["mcv"] / iron["rbc_count"]).median() > 13
    macro = _group(big, "macrocytic")
    assert macro["mcv"].mean() > 100 and (macro["mcv"] > 100).mean() > 0.8
    assert macro["rdw"].mean() > 15
    hemo = _group(big, "hemolysis")
    assert hemo["retic_fraction"].mean() > 0.05
    healthy = big.samples[big.samples["condition"] == "healthy"]
    assert 0.5 < len(healthy) / len(big.samples) < 0.65
    assert set(big.samples["condition"]) == set(CONDITIONS)


def test_labels_follow_physiology(big):
    s = big.samples
    np.testing.assert_allclose(s["hematocrit"], s["rbc_count"] * s["mcv"] / 10)
    np.testing.assert_allclose(s["hemoglobin"], s["rbc_count"] * s["mch"] / 10)
    np.testing.assert_allclose(s["mchc"], 100 * s["mch"] / s["mcv"])
    who = np.where(s["sex"] == "M", s["hemoglobin"] < 13.0, s["hemoglobin"] < 12.0)
    assert (s["anemia"].to_numpy() == who).all()
    assert s["anemia"].dtype == bool


def test_cells_match_patient_indices():
    sim = simulate_cohort(40, 20000, seed=2)
    s = sim.samples
    V = sim.cells[:, 0].reshape(40, -1).astype(np.float64)
    H = sim.cells[:, 1].reshape(40, -1).astype(np.float64)
    np.testing.assert_allclose(V.mean(1), s["mcv"], rtol=0.01)
    np.testing.assert_allclose(H.mean(1), s["mch"], rtol=0.01)
    np.testing.assert_allclose(100 * V.std(1) / V.mean(1), s["rdw"], rtol=0.06)
    np.testing.assert_allclose(H.std(1), s["chdw"], rtol=0.06)
    np.testing.assert_allclose((100 * H / V).std(1), s["hdw"], rtol=0.06)


def test_iron_deficiency_has_hypochromic_tail():
    sim = simulate_cohort(600, 500, seed=4)
    s = sim.samples
    H = sim.cells[:, 1].reshape(len(s), -1)
    hypo = (H < 17).mean(1)
    iron = s["condition"].to_numpy() == "iron_deficiency"
    healthy = s["condition"].to_numpy() == "healthy"
    assert hypo[iron].mean() > 0.05 and hypo[healthy].mean() < 0.01


def test_mixture_indices_single_component():
    # one log-normal component: the indices are its own parameters
    w, M, C = np.ones((1, 1)), np.array([[90.0]]), np.array([[33.0]])
    cv, cc = np.array([[0.13]]), np.array([[0.08]])
    out = mixture_indices(w, M, C, cv, cc)
    assert out["mcv"][0] == pytest.approx(90.0) and out["rdw"][0] == pytest.approx(13.0)
    assert out["mch"][0] == pytest.approx(29.7) and out["hdw"][0] == pytest.approx(33 * 0.08)


def test_same_seed_same_bytes_and_other_seed_differs():
    a, b, c = (simulate_cohort(30, 100, seed=s) for s in (5, 5, 6))
    digest = lambda x: hashlib.sha256(x.cells.tobytes() + x.samples.to_csv().encode()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b) != digest(c)
    assert a.cells.dtype == np.float32 and a.cells.shape == (3000, 2)
    np.testing.assert_array_equal(a.offsets, np.arange(31) * 100)


def test_patients_do_not_depend_on_cohort_size_or_cells():
    small = simulate_cohort(10, 50, seed=9).samples
    large = simulate_cohort(25, 80, seed=9).samples
    assert small.equals(large.iloc[:10])


def test_the_record_is_what_the_samples_show():
    sim = simulate_cohort(300, 5, seed=13)
    s, rec = sim.samples, sim.record
    assert len(rec) == 300 and rec.conditions == CONDITIONS
    assert (s["condition"].to_numpy() == rec.condition_name).all()
    assert (s["condition"].to_numpy() == np.asarray(CONDITIONS)[rec.condition]).all()
    np.testing.assert_array_equal(s["severity"], rec.severity)
    np.testing.assert_array_equal(s["rbc_count"], rec.rbc)
    np.testing.assert_array_equal(s["sex"] == "F", rec.sex == 1)
    assert (rec.severity[rec.condition_name == "healthy"] == 0).all()
    pop = rec.population
    assert pop.w.shape == pop.M.shape == pop.cv.shape == (300, 4)
    np.testing.assert_allclose(pop.w.sum(1), 1.0)
    np.testing.assert_array_equal(s["mcv"], pop.indices()["mcv"])
    assert (pop.donor_share[rec.condition_name != "transfusion"] == 0).all()
    # the record alone, drawn without cells, is the same record
    again = draw_patients(300, 13)
    for name in ("sex", "age", "condition", "severity", "rbc", "rbc_mean", "rbc_sd"):
        np.testing.assert_array_equal(getattr(again, name), getattr(rec, name))
    for name, value in pop.as_dict().items():
        np.testing.assert_array_equal(again.population.as_dict()[name], value)


def test_bound_is_consistent(big):
    b = big.bound
    assert 3 < b["bound_hematocrit_mse"] < 15
    # the realised error of the bound's prediction agrees with its expected value
    assert b["bound_hematocrit_mse_realized"] == pytest.approx(b["bound_hematocrit_mse"], rel=0.15)
    assert 0.8 < b["bound_anemia_accuracy"] < 1.0
    assert abs(b["bound_anemia_accuracy_realized"] - b["bound_anemia_accuracy"]) < 0.03


def test_summary_table(big):
    t = summary_table(big.samples)
    assert list(t.index) == list(CONDITIONS)
    assert t["n"].sum() == len(big.samples) and t["share"].sum() == pytest.approx(1.0)
    assert t.loc["healthy", "anemia_rate"] < t.loc["iron_deficiency", "anemia_rate"]
