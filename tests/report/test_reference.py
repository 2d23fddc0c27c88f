"""The training cohort's healthy summary: what is selected, what it holds, the fallbacks."""

import numpy as np

from flowrbc.checkpoint import load_checkpoint
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.report.reference import healthy_reference


def _train_idx(cohort):
    return np.flatnonzero(cohort.samples["split"].to_numpy() == "train")


def test_summary_of_the_healthy_training_patients():
    cohort = synthetic_cohort(n_patients=150, n_cells=200, seed=1)
    train = _train_idx(cohort)
    ref = healthy_reference(cohort.X, cohort.offsets, cohort.samples, train)
    healthy = (cohort.samples["condition"].to_numpy()[train] == "healthy").sum()
    assert ref["n_patients"] == healthy and ref["n_cells"] == 200 * healthy
    assert "healthy" in ref["selection"]
    assert np.isclose(np.sum(ref["density"]), 1.0, atol=1e-3)  # the grid holds (nearly) every cell
    for band in (ref["volume_band"], ref["hemoglobin_band"]):
        p5, p50, p95 = (np.asarray(band[k]) for k in ("p5", "p50", "p95"))
        assert (p5 <= p50).all() and (p50 <= p95).all() and p95.max() > 0
    mcv = ref["indices"]["mcv"]
    assert 75 < mcv["p2.5"] < mcv["p50"] < mcv["p97.5"] < 100


def test_selection_falls_back_without_condition_and_without_anemia():
    cohort = synthetic_cohort(n_patients=60, n_cells=50, seed=2)
    train = _train_idx(cohort)
    no_condition = cohort.samples.drop(columns=["condition"])
    ref = healthy_reference(cohort.X, cohort.offsets, no_condition, train)
    assert ref["n_patients"] == (~cohort.samples["anemia"].to_numpy()[train]).sum()
    assert "non-anemic" in ref["selection"]
    bare = no_condition.drop(columns=["anemia"])
    assert healthy_reference(cohort.X, cohort.offsets, bare, train)["n_patients"] == len(train)
    nobody = cohort.samples.assign(condition="iron_deficiency")
    assert healthy_reference(cohort.X, cohort.offsets, nobody, train) is None


def test_training_stores_the_summary_in_the_checkpoint(tiny_run):
    model_path, _ = tiny_run
    ref = load_checkpoint(model_path)["healthy_reference"]
    assert ref["version"] == 1 and ref["n_patients"] > 0 and len(ref["density"]) == len(ref["volume_edges"]) - 1
