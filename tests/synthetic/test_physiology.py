"""One physiology table: the generator draws from it, the bound integrates over it, and the
bound takes each patient's condition and parameters from the generator's record."""

import ast
from pathlib import Path

import numpy as np
import pytest

from flowrbc.evaluation import paired
from flowrbc.synthetic import physiology
from flowrbc.synthetic.bound import cell_bound, look_alike_groups, reveals_severity
from flowrbc.synthetic.physiology import Abnormal, Linear
from flowrbc.synthetic.simulate import simulate_cohort

PACKAGE = Path(physiology.__file__).parent


def _bound(sim) -> dict:
    s = sim.samples
    return {k.removeprefix("bound_"): s[k].to_numpy() for k in s.columns if k.startswith("bound_")}


def _imports(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {name for name in found if name.startswith("flowrbc")}


def test_the_table_stands_alone_and_the_bound_never_imports_the_generator():
    assert _imports("physiology") == set()
    assert not any("simulate" in name or "reference" in name for name in _imports("bound"))
    assert not any("simulate" in name or "bound" in name or "reference" in name for name in _imports("record"))


def test_the_looks_of_the_default_table():
    t = physiology.TABLE
    groups = [tuple(t.conditions[k].name for k in g) for g in look_alike_groups(t)]
    assert ("healthy", "beta_thal_trait", "chronic_disease") in groups
    singles = {g[0] for g in groups if len(g) == 1}
    assert singles == {"iron_deficiency", "macrocytic", "hemolysis", "transfusion"}
    shows = {c.name for c in t.conditions if reveals_severity(c.effect)}
    assert shows == {"iron_deficiency", "macrocytic", "hemolysis"}


def test_a_table_the_bound_cannot_separate_is_refused():
    # macrocytic fragments made to look like iron deficiency's hypochromic cells: two
    # conditions of one look that both show their severity
    t = physiology.TABLE.replace_effect("macrocytic", abnormal=Abnormal(Linear(0.02, 0.08), 0.80, 0.70))
    with pytest.raises(NotImplementedError, match="look alike"):
        look_alike_groups(t)


def test_the_recorded_severity_is_what_the_population_shows():
    """The bound reads the recorded severity only where the table says the cells show it; there
    the population gives it back exactly through the table's own coefficients."""
    rec = simulate_cohort(3000, 1, seed=31).record
    t = physiology.TABLE
    pop = rec.population
    for code, condition in enumerate(t.conditions):
        m = rec.condition == code
        if not reveals_severity(condition.effect) or not m.any():
            continue
        share = condition.effect.abnormal.share
        seen = (pop.abnormal_share[m] / (1 - pop.donor_share[m]) - share.at0) / share.slope
        np.testing.assert_allclose(seen, rec.severity[m], rtol=1e-9, atol=1e-12)


def test_where_the_cells_show_everything_the_bound_is_the_generators_own_law():
    """Iron deficiency and macrocytosis show condition, severity and the healthy reticulocyte
    share, so the bound's posterior is a point: the RBC law the generator drew from. A bound
    that took the wrong condition or severity, or coefficients of its own, would miss it."""
    sim = simulate_cohort(2000, 1, seed=17)
    rec, b = sim.record, _bound(sim)
    mcv = rec.population.indices()["mcv"]
    for name in ("iron_deficiency", "macrocytic"):
        m = rec.condition_name == name
        assert m.sum() > 50
        np.testing.assert_allclose(b["hematocrit"][m], rec.rbc_mean[m] * mcv[m] / 10, rtol=1e-10)
        np.testing.assert_allclose(b["hematocrit_sd"][m], rec.rbc_sd[m] * mcv[m] / 10, rtol=1e-10)


def test_the_bound_reads_the_recorded_condition():
    sim = simulate_cohort(1500, 1, seed=23)
    rec = sim.record
    iron = np.flatnonzero(rec.condition_name == "iron_deficiency")
    relabelled = rec.take(iron)
    relabelled.condition[:] = rec.conditions.index("macrocytic")
    moved = cell_bound(relabelled)["hematocrit"]
    assert np.all(np.abs(moved - sim.samples["bound_hematocrit"].to_numpy()[iron]) > 0.1)


def test_one_coefficient_moves_the_generator_and_the_bound_together(monkeypatch):
    """Iron deficiency's RBC loss per unit severity, changed in the table: the generator's iron
    patients lose more cells and the bound follows exactly; everyone else is untouched."""
    before = simulate_cohort(1500, 1, seed=41)
    table = physiology.TABLE.replace_effect("iron_deficiency", rbc_scale=Linear(1.0, -0.40))
    monkeypatch.setattr(physiology, "TABLE", table)
    after = simulate_cohort(1500, 1, seed=41)

    rec0, rec1 = before.record, after.record
    iron = rec1.condition_name == "iron_deficiency"
    assert iron.sum() > 50
    np.testing.assert_array_equal(rec0.condition, rec1.condition)
    np.testing.assert_array_equal(rec0.severity, rec1.severity)
    s = rec1.severity[iron]
    np.testing.assert_allclose(rec1.rbc_mean[iron] / rec0.rbc_mean[iron], (1 - 0.40 * s) / (1 - 0.18 * s), rtol=1e-12)
    np.testing.assert_array_equal(rec1.rbc_mean[~iron], rec0.rbc_mean[~iron])

    b0, b1 = _bound(before), _bound(after)
    mcv = rec1.population.indices()["mcv"]
    np.testing.assert_allclose(b1["hematocrit"][iron], rec1.rbc_mean[iron] * mcv[iron] / 10, rtol=1e-10)
    assert np.all(b1["hematocrit"][iron] < b0["hematocrit"][iron])
    np.testing.assert_array_equal(b1["hematocrit"][~iron], b0["hematocrit"][~iron])
    # the bound built from the old table misses the new data
    stale = cell_bound(rec1, physiology.Physiology())["hematocrit"]
    np.testing.assert_allclose(stale[iron], b0["hematocrit"][iron], rtol=1e-10)


def test_a_changed_coefficient_of_an_unseen_condition_keeps_the_bound_calibrated(monkeypatch):
    """Thalassemia trait hides among healthy and chronic-disease patients, so the bound
    integrates over it. With a larger RBC count for it in the table, the bound (reading the
    same table) still claims the error it makes; the bound of the old table does not."""
    table = physiology.TABLE.replace_effect("beta_thal_trait", rbc_scale=Linear(1.40, 0.10))
    monkeypatch.setattr(physiology, "TABLE", table)
    sim = simulate_cohort(6000, 1, seed=3)
    y = sim.samples["hematocrit"].to_numpy()
    thal = sim.record.condition_name == "beta_thal_trait"

    def excess(b, rows):  # E[(y - E[y|pop])^2] - E[Var(y|pop)], paired per patient
        return paired((y[rows] - b["hematocrit"][rows]) ** 2, b["hematocrit_sd"][rows] ** 2)

    now = excess(_bound(sim), slice(None))
    assert abs(now["diff"]) < 3 * now["se"]
    assert abs(excess(_bound(sim), thal)["diff"]) < 3 * excess(_bound(sim), thal)["se"]
    stale = cell_bound(sim.record, physiology.Physiology())
    old = excess(stale, thal)
    assert old["diff"] > 10 * old["se"]


def test_a_record_from_another_table_is_refused():
    rec = simulate_cohort(20, 1, seed=1).record
    renamed = physiology.Physiology(conditions=tuple(
        physiology.Condition(c.name + "_x", c.prevalence, c.effect, c.age_scaled, c.graded)
        for c in physiology.TABLE.conditions))
    with pytest.raises(ValueError, match="not the table's"):
        cell_bound(rec, renamed)
