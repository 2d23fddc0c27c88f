"""RBC gate and QC."""

import anndata
import numpy as np
import pandas as pd
import pytest

from flowrbc import pp
from flowrbc.synthetic.simulate import simulate_cohort


def test_gate_drops_impossible_and_nonfinite_events_only():
    v = np.array([90, np.nan, 90, np.inf, 5, 300, 90, 90, 55, 150, 25, -3.0])
    h = np.array([30, 30, np.nan, 30, 1, 30, 1, 200, 12, 50, 8, 30.0])
    keep = pp.rbc_gate(v, h)
    # kept: normal cell, a hypochromic microcyte (55 fL, 12 pg), a macrocyte (150 fL, 50 pg),
    # a small fragment (25 fL, 8 pg); dropped: NaN/inf, platelet-sized, oversized, impossible Hb
    np.testing.assert_array_equal(keep, [1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0])


def test_gate_keeps_almost_all_simulated_cells_of_every_condition():
    sim = simulate_cohort(400, 300, seed=3)
    keep = pp.rbc_gate(sim.cells[:, 0], sim.cells[:, 1]).reshape(400, -1).mean(1)
    assert keep.min() > 0.97
    for cond in ("macrocytic", "beta_thal_trait", "iron_deficiency"):
        assert keep[sim.samples["condition"].to_numpy() == cond].mean() > 0.995


def test_qc_summary_counts_and_indices():
    rng = np.random.default_rng(0)
    v = rng.lognormal(np.log(88), 0.13, 1000)
    h = v * 0.335
    cells = np.stack([v, h], 1)
    cells[:5] = np.nan
    cells[5:8, 0] = 1000.0
    qc = pp.qc_summary(cells)
    assert (qc["n_events"], qc["n_gated"], qc["n_nonfinite"]) == (1000, 992, 5)
    good = cells[8:]
    assert qc["mcv"] == pytest.approx(good[:, 0].mean())
    assert qc["rdw"] == pytest.approx(100 * good[:, 0].std() / good[:, 0].mean())  # population SD (ddof 0)
    assert qc["chdw"] == pytest.approx(good[:, 1].std())
    assert qc["hdw"] == pytest.approx(0.0, abs=1e-6)  # constant concentration
    assert qc["nonfinite_events"] and not qc["too_few_cells"] and not qc["many_gated_out"]


def test_qc_flags_too_few_cells_and_empty_sample():
    qc = pp.qc_summary(np.full((50, 2), [90.0, 30.0]))
    assert qc["too_few_cells"]
    empty = pp.qc_summary(np.zeros((0, 2)))
    assert empty["n_gated"] == 0 and np.isnan(empty["mcv"]) and empty["too_few_cells"]
    with pytest.raises(ValueError, match="shape"):
        pp.qc_summary(np.zeros((10, 3)))


def test_qc_by_sample_equals_per_sample_summary():
    sim = simulate_cohort(7, 300, seed=1)
    cells = sim.cells.copy()
    cells[3, 0] = np.nan
    qc = pp.qc_by_sample(cells, sim.offsets, block=500)  # blocks cut across samples
    for i in range(7):
        one = pp.qc_summary(cells[sim.offsets[i] : sim.offsets[i + 1]])
        for k in ("n_gated", "n_nonfinite", "mcv", "rdw", "hdw"):
            assert qc[k][i] == pytest.approx(one[k])
    assert qc["n_nonfinite"][0] == 1


def test_qc_by_sample_sds_are_the_moment_features_sds_with_empty_samples():
    """One SD: qc_by_sample's rdw / chdw / hdw are ``metrics.segment_mean_sd`` of the gated cells
    (population SD), with samples of no events or no gated cell, and blocks cutting samples."""
    from flowrbc.metrics import segment_mean_sd

    rng = np.random.default_rng(4)
    counts = np.array([0, 300, 5, 0, 40, 1, 250])
    offsets = np.concatenate([[0], np.cumsum(counts)])
    v = rng.lognormal(np.log(88), 0.13, offsets[-1])
    cells = np.column_stack([v, v * rng.normal(0.335, 0.02, len(v))])
    cells[300:305] = [5.0, 1.0]  # sample 2: debris only
    cells[1, 0] = np.nan
    for block in (1 << 22, 100, 1):
        qc = pp.qc_by_sample(cells.astype(np.float32), offsets, block=block)
        np.testing.assert_array_equal(qc["n_events"], counts)
        assert list(qc["n_nonfinite"]) == [0, 1, 0, 0, 0, 0, 0]
        assert list(qc["n_gated"]) == [0, 299, 0, 0, 40, 1, 250]
        assert np.isnan(qc["mcv"][[0, 2, 3]]).all() and np.isnan(qc["rdw"][[0, 2, 3]]).all()
        assert qc["rdw"][5] == 0.0  # one cell: SD 0
        for i in (1, 4, 5, 6):
            x = cells[offsets[i] : offsets[i + 1]].astype(np.float32).astype(np.float64)
            x = x[pp.rbc_gate(x[:, 0], x[:, 1])]
            mean, sd = segment_mean_sd(x[:, 0], np.array([0, len(x)]))
            assert qc["mcv"][i] == mean[0] and qc["rdw"][i] == 100 * sd[0] / mean[0]
            assert qc["chdw"][i] == segment_mean_sd(x[:, 1], np.array([0, len(x)]))[1][0]
            assert qc["hdw"][i] == segment_mean_sd(100 * x[:, 1] / x[:, 0], np.array([0, len(x)]))[1][0]
            assert qc["rdw"][i] == pytest.approx(100 * x[:, 0].std() / x[:, 0].mean(), rel=1e-12)
    assert pp.qc_flags(qc)["too_few_cells"].tolist() == [True, False, True, True, True, True, False]


def _adata(cells, sample_ids=None):
    var = pd.DataFrame({"marker": ["Volume", "Hb"]}, index=["FSC", "RBC Hb"])
    obs = pd.DataFrame({"sample_id": pd.Categorical(sample_ids)} if sample_ids is not None else {},
                       index=[str(i) for i in range(len(cells))])
    return anndata.AnnData(X=cells.astype(np.float32), obs=obs, var=var)


def test_gate_rbc_scanpy_conventions():
    cells = np.array([[90, 30], [np.nan, 30], [5, 1], [120, 40.0]])
    a = _adata(cells)
    assert pp.gate_rbc(a) is None
    np.testing.assert_array_equal(a.obs["rbc_gate"], [True, False, False, True])
    b = _adata(cells)
    out = pp.gate_rbc(b, copy=True)
    assert "rbc_gate" in out.obs and "rbc_gate" not in b.obs


def test_qc_metrics_one_sample_and_cohort():
    sim = simulate_cohort(3, 250, seed=0)
    a = _adata(sim.cells)
    assert pp.qc_metrics(a) is None
    assert a.uns["qc"]["n_gated"] == 750
    ids = np.repeat(["a", "b", "c"], 250)
    perm = np.random.default_rng(0).permutation(750)
    c = _adata(sim.cells[perm], ids[perm])
    pp.qc_metrics(c)
    table = c.uns["qc"]
    assert list(table.index) == ["a", "b", "c"]
    for i, sid in enumerate("abc"):
        assert table.loc[sid, "mcv"] == pytest.approx(sim.cells[250 * i : 250 * (i + 1), 0].mean(dtype=np.float64), rel=1e-6)
