"""``flowrbc explain``: the attributions add up as documented, the CSV has one row per event in
file order with NaN outside the gate, a cohort gets its obs columns in its own row order."""

import csv

import numpy as np
import pytest
from typer.testing import CliRunner

from flowrbc.checkpoint import load_checkpoint, save_checkpoint
from flowrbc.cli import app
from flowrbc.errors import CheckpointError
from flowrbc.explain import explain_cells, orderings, regions_of
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.io.cohort import write_cohort
from flowrbc.io.fcs import write_fcs_arrays
from flowrbc.predict import predict_file
from flowrbc.predictor import Predictor
from flowrbc.synthetic.simulate import COMPONENTS, simulate_cohort
from flowrbc.train import TrainConfig, train_cohort
from tests.instrument_units import FACTORS

TINY = dict(width=16, depth=1, set_size=64, epochs=2, batch_size=16, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("explain")
    cohort = synthetic_cohort(n_patients=120, n_cells=300, seed=8)
    write_cohort(cohort, root / "cohort.h5ad")
    train_cohort(cohort, TrainConfig(**TINY), root / "run", plots=False)
    return root, cohort, Predictor.load(root / "run" / "model.pt")


def _file(tmp_path, cohort, i, junk=True):
    """Sample i as an FCS file; with ``junk``, three events the gate drops, spread through it."""
    cells = np.array(cohort.sample_cells(i), dtype=np.float32)
    if junk:
        cells = np.insert(cells, [0, 100, len(cells)], [[np.nan, 30.0], [500.0, 30.0], [90.0, 0.0]], axis=0)
    s = cohort.samples
    keywords = {"SEX": str(s["sex"].iloc[i]), "AGE": str(int(s["age"].iloc[i]))}
    return write_fcs_arrays(tmp_path / f"p{i}.fcs", cells, list(cohort.channels), keywords=keywords), cells


@pytest.mark.parametrize("method", ["occlusion", "shapley"])
def test_attributions_add_up_to_prediction_minus_reference(run, method):
    _, cohort, predictor = run
    prep = predictor.prepare_cohort(cohort, np.arange(3))
    raw, _ = predictor.predict(prep)
    for i in range(3):
        cells = prep.raw[prep.offsets_np[i] : prep.offsets_np[i + 1]]
        e = explain_cells(predictor, cells, prep.cov_raw[i], method=method, regions=8, permutations=2)
        assert e.prediction["hematocrit"] == pytest.approx(raw.value["hematocrit"][i], abs=1e-5)
        t = predictor.calibration_for("anemia", False)["temperature"]
        assert e.prediction["anemia"] == pytest.approx(raw.value["anemia"][i] / t, abs=1e-5)
        for name, a in e.attributions.items():
            assert a.shape == (len(cells),)
            assert a.sum() == pytest.approx(e.prediction[name] - e.reference[name], abs=1e-9)
            # a region's value is shared equally by its cells
            for j in range(len(e.counts)):
                assert np.ptp(a[e.regions == j]) == 0
        assert e.reference["hematocrit"] != pytest.approx(e.prediction["hematocrit"], abs=1e-6)


def test_occlusion_is_each_region_replaced_alone_plus_an_equal_share(run):
    """Region j's value is f(patient) − f(patient with region j's cells replaced by their
    stand-ins), plus its cells' share of what the regions do not explain one by one."""
    _, cohort, predictor = run
    prep = predictor.prepare_cohort(cohort, np.arange(1))
    cells = np.asarray(prep.raw, dtype=np.float64)
    e = explain_cells(predictor, cells, prep.cov_raw[0], regions=6, seed=5)
    rng = np.random.default_rng(5)  # the stand-ins as explain_cells draws them (no subsample)
    stand_in = predictor.reference_cells[rng.integers(len(predictor.reference_cells), size=len(cells))]
    n = len(cells)
    for j in (0, len(e.counts) - 1):
        swapped = np.where((e.regions == j)[:, None], stand_in, cells)
        p2 = predictor.prepare(swapped, np.array([0, n]), prep.cov_raw[:1])
        without, _ = predictor.predict(p2, seed=5)
        occ = e.prediction["hematocrit"] - without.value["hematocrit"][0]
        share = e.shared["hematocrit"] * e.counts[j] / n
        assert e.region_values["hematocrit"][j] == pytest.approx(occ + share, abs=1e-6)


def test_regions_and_orderings():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (200, 2)), rng.normal(5, 0.1, (50, 2))])
    labels, centres = regions_of(x, 2, seed=0)
    assert len(centres) == 2 and set(labels[:200]) != set(labels[200:])
    assert len(set(labels[:200])) == 1 and len(set(labels[200:])) == 1
    o = orderings(6, 4, seed=1)
    assert o.shape == (4, 6) and (o[1] == o[0][::-1]).all() and (o[3] == o[2][::-1]).all()
    assert all(sorted(row) == list(range(6)) for row in o)


def test_explain_csv_one_row_per_event_nan_outside_gate(run, tmp_path):
    _, cohort, predictor = run
    path, events = _file(tmp_path, cohort, 4)
    res = CliRunner().invoke(app, ["explain", str(path), "--model", str(run[0] / "run" / "model.pt"),
                                   "-o", str(tmp_path / "out"), "--regions", "8", "--permutations", "2"])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "out" / "p4.cells.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["event", "volume", "hemoglobin", "gated", "region", "attribution_hematocrit",
                             "attribution_anemia"]
    assert len(rows) == len(events)
    assert [int(r["event"]) for r in rows] == list(range(len(events)))
    gated = np.array([r["gated"] == "1" for r in rows])
    assert not gated[[0, 101, len(events) - 1]].any() and gated.sum() == len(events) - 3
    volume = np.array([float(r["volume"]) for r in rows])
    np.testing.assert_allclose(volume[gated], events[gated, 0], rtol=1e-5)
    hct = np.array([float(r["attribution_hematocrit"]) for r in rows])
    assert np.isnan(hct[~gated]).all() and np.isfinite(hct[gated]).all()
    assert all(int(r["region"]) == -1 for r, g in zip(rows, gated) if not g)
    # the gated cells' attributions add up to the prediction predict reports minus the reference
    e = explain_cells(predictor, events[gated].astype(np.float64),
                      predictor.covariates.values(None, {"SEX": cohort.samples["sex"].iloc[4],
                                                         "AGE": str(int(cohort.samples["age"].iloc[4]))})[1],
                      regions=8, permutations=2)
    reported = predict_file(predictor, path).values["hematocrit"]
    assert hct[gated].sum() == pytest.approx(reported - e.reference["hematocrit"], abs=1e-4)
    assert "hematocrit" in res.output and ("lowered" in res.output or "raised" in res.output)


def test_explain_cytometer_units_with_scale(run, tmp_path):
    _, cohort, _ = run
    cells = np.array(cohort.sample_cells(2), dtype=np.float32)
    raw = np.stack([cells[:, 0] / FACTORS["volume"], cells[:, 1] / FACTORS["hemoglobin"]], 1)
    path = write_fcs_arrays(tmp_path / "cyto.fcs", raw.astype(np.float32), ["FSC-A", "SSC-A"])
    base = ["explain", str(path), "--model", str(run[0] / "run" / "model.pt"), "-o", str(tmp_path / "o"),
            "--channel", "volume=FSC-A", "--channel", "hemoglobin=SSC-A", "--regions", "4", "--permutations", "2"]
    refused = CliRunner().invoke(app, base)
    assert refused.exit_code == 1 and "--scale volume=FACTOR" in refused.output
    res = CliRunner().invoke(app, base + ["--scale", f"volume={FACTORS['volume']}",
                                          "--scale", f"hemoglobin={FACTORS['hemoglobin']}"])
    assert res.exit_code == 0, res.output
    with open(tmp_path / "o" / "cyto.cells.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[0]["volume"]) == pytest.approx(cells[0, 0], rel=1e-4)


def test_explain_cohort_writes_obs_in_its_order_and_a_map(run, tmp_path):
    import anndata

    root, cohort, predictor = run
    small = cohort.samples.index[:3]
    adata = anndata.read_h5ad(root / "cohort.h5ad")
    adata = adata[adata.obs["sample_id"].isin(small)].copy()
    adata = adata[np.random.default_rng(0).permutation(adata.n_obs)].copy()  # cells not grouped by sample
    adata.write_h5ad(tmp_path / "small.h5ad")
    res = CliRunner().invoke(app, ["explain", str(tmp_path / "small.h5ad"), "--model", str(root / "run" / "model.pt"),
                                   "-o", str(tmp_path / "x"), "--regions", "4", "--permutations", "2"])
    assert res.exit_code == 0, res.output
    out = anndata.read_h5ad(tmp_path / "x" / "small.explained.h5ad")
    assert out.n_obs == adata.n_obs and (out.obs_names == adata.obs_names).all()
    for sid in small:
        rows = (out.obs["sample_id"] == sid).to_numpy()
        i = cohort.samples.index.get_loc(sid)
        cells = np.asarray(out.X[rows], dtype=np.float64)  # the sample's cells in obs order, as explained
        e = explain_cells(predictor, cells, predictor.covariates.raw(cohort.samples.iloc[[i]])[0], regions=4,
                          permutations=2)
        got = out.obs["attribution_hematocrit"].to_numpy()[rows]
        np.testing.assert_allclose(got, e.attributions["hematocrit"], atol=1e-9)
        assert got.sum() == pytest.approx(e.prediction["hematocrit"] - e.reference["hematocrit"], abs=1e-9)
    assert (tmp_path / "x" / "small.map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_checkpoint_without_reference_cells_is_refused_in_one_line(run, tmp_path):
    payload = load_checkpoint(run[0] / "run" / "model.pt")
    payload.pop("explain_reference")
    payload.pop("digest")
    save_checkpoint(tmp_path / "old.pt", payload)
    with pytest.raises(CheckpointError, match="no reference cells"):
        explain_cells(Predictor.load(tmp_path / "old.pt"), np.ones((10, 2)), np.array([1.0, 40.0]))
    path, _ = _file(tmp_path, run[1], 0, junk=False)
    res = CliRunner().invoke(app, ["explain", str(path), "--model", str(tmp_path / "old.pt")])
    assert res.exit_code == 1 and "no reference cells" in res.output and "Traceback" not in res.output


def test_simulator_components_leave_the_cells_unchanged():
    a = simulate_cohort(300, 200, seed=4)
    b = simulate_cohort(300, 200, seed=4, components=True)
    np.testing.assert_array_equal(a.cells, b.cells)
    assert a.components is None and b.components.shape == (len(b.cells),)
    comp = b.components.reshape(300, 200)
    cond = b.samples["condition"].to_numpy()
    donor = COMPONENTS.index("donor")
    assert (comp[cond == "transfusion"] == donor).mean() > 0.2
    assert not (comp[cond != "transfusion"] == donor).any()
    assert not (comp[cond == "healthy"] == COMPONENTS.index("abnormal")).any()


def test_the_patient_report_shows_which_cells_drove_the_prediction(run, tmp_path):
    _, cohort, predictor = run
    path, _ = _file(tmp_path, cohort, 6, junk=False)
    res = CliRunner().invoke(app, ["report", str(path), "--model", str(run[0] / "run" / "model.pt"),
                                   "-o", str(tmp_path / "rep")])
    assert res.exit_code == 0, res.output
    page = (tmp_path / "rep" / "p6.html").read_text()
    assert "Which cells drove the hematocrit prediction" in page
    e = explain_cells(predictor, np.asarray(cohort.sample_cells(6), dtype=np.float64),
                      predictor.covariates.raw(cohort.samples.iloc[[6]])[0])
    assert f"{e.prediction['hematocrit'] - e.reference['hematocrit']:+.3g} points" in page
    assert ("lowered the hematocrit by" in page) or ("raised the hematocrit by" in page)


def test_cohort_report_pages_carry_the_attribution_panel(run, tmp_path):
    root = run[0]
    res = CliRunner().invoke(app, ["report", str(root / "cohort.h5ad"), "--model", str(root / "run" / "model.pt"),
                                   "-o", str(tmp_path / "c"), "--pages", "1"])
    assert res.exit_code == 0, res.output
    (page,) = (tmp_path / "c" / "patients").glob("*.html")
    assert "Which cells drove the hematocrit prediction" in page.read_text()
