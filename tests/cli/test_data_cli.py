"""The data commands: simulate, ingest, import-flowrbc."""

import filecmp

import h5py
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from flowrbc.cli import app
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.io.cohort import read_cohort

runner = CliRunner()


@pytest.fixture(scope="module")
def simdir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    res = runner.invoke(app, ["simulate", str(out), "--patients", "12", "--cells", "120", "--seed", "4"])
    assert res.exit_code == 0, res.output
    assert "bound" in res.output and "healthy" in res.output
    return out


def test_simulate_writes_fcs_and_clinical(simdir):
    files = sorted(simdir.glob("*.fcs"))
    assert len(files) == 12
    clinical = pd.read_csv(simdir / "clinical.csv")
    assert list(clinical["file"]) == [f.name for f in files]
    for col in ("sample_id", "sex", "age", "condition", "hematocrit", "hemoglobin", "rbc_count", "mcv",
                "mch", "mchc", "rdw", "anemia"):
        assert col in clinical.columns
    from flowrbc.io.fcs import read_fcs_data

    d = read_fcs_data(files[0])
    assert d.names == ["RBC Volume", "RBC Hb"] and d.n_events == 120
    assert d.keywords["$CYT"] == "flowrbc-simulator"
    assert d.keywords["FLOWRBC_SAMPLE_ID"] == clinical["sample_id"][0]


def test_simulate_same_seed_same_bytes(simdir, tmp_path):
    res = runner.invoke(app, ["simulate", str(tmp_path), "--patients", "12", "--cells", "120", "--seed", "4"])
    assert res.exit_code == 0
    cmp = filecmp.dircmp(simdir, tmp_path)
    assert not cmp.diff_files and len(cmp.same_files) == 13
    assert filecmp.cmp(simdir / "clinical.csv", tmp_path / "clinical.csv", shallow=False)


def test_ingest_matches_synthetic_cohort(simdir, tmp_path):
    out = tmp_path / "cohort.h5ad"
    res = runner.invoke(app, ["ingest", str(simdir), "--clinical", str(simdir / "clinical.csv"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "12 samples" in res.output
    got = read_cohort(out)
    ref = synthetic_cohort(12, 120, seed=4)  # the same patients, built without files
    np.testing.assert_array_equal(got.X, ref.X)
    np.testing.assert_array_equal(got.offsets, ref.offsets)
    np.testing.assert_allclose(got.samples["hematocrit"], ref.samples["hematocrit"], rtol=1e-5)
    assert (got.samples["anemia"] == ref.samples["anemia"]).all()
    assert set(got.samples["split"]) <= {"train", "val", "test"}


def test_ingest_skips_a_corrupt_file_and_strict_fails(simdir, tmp_path):
    import shutil

    d = tmp_path / "d"
    shutil.copytree(simdir, d)
    (d / "S000003.fcs").write_bytes(b"FCS3.1   garbage")
    out = tmp_path / "c.h5ad"
    res = runner.invoke(app, ["ingest", str(d), "--clinical", str(d / "clinical.csv"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "S000003.fcs" in res.output and "1 files skipped" in res.output
    c = read_cohort(out)
    assert c.n_samples == 11 and "S000003" not in c.samples.index
    strict_out = tmp_path / "strict.h5ad"
    res = runner.invoke(app, ["ingest", str(d), "--clinical", str(d / "clinical.csv"), "-o", str(strict_out), "--strict"])
    assert res.exit_code == 1 and "S000003.fcs" in res.output
    assert not strict_out.exists()


def test_ingest_channel_override_and_bad_channel(simdir, tmp_path):
    out = tmp_path / "c.h5ad"
    args = ["ingest", str(simdir), "--clinical", str(simdir / "clinical.csv"), "-o", str(out), "--strict"]
    res = runner.invoke(app, args + ["--channel", "volume=RBC Volume", "--channel", "hemoglobin=RBC Hb"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, args + ["--channel", "volume=FSC-A"])
    assert res.exit_code == 1 and "FSC-A" in res.output
    res = runner.invoke(app, args + ["--channel", "volume"])
    assert res.exit_code == 1 and "ROLE=CHANNEL" in res.output


def test_ingest_matches_by_sample_id_without_file_column(simdir, tmp_path):
    clinical = pd.read_csv(simdir / "clinical.csv").drop(columns=["file", "anemia"]).iloc[::-1]
    clinical.to_csv(tmp_path / "clin.csv", index=False)
    out = tmp_path / "c.h5ad"
    res = runner.invoke(app, ["ingest", str(simdir), "--clinical", str(tmp_path / "clin.csv"), "-o", str(out)])
    assert res.exit_code == 0, res.output
    c = read_cohort(out)
    ref = pd.read_csv(simdir / "clinical.csv").set_index("sample_id")
    assert list(c.samples.index) == list(ref.index)  # in file order
    # anemia derived from hemoglobin and sex by the WHO rule
    assert (c.samples["anemia"] == ref.loc[c.samples.index, "anemia"]).all()


def test_ingest_bad_inputs(simdir, tmp_path):
    res = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--clinical", str(simdir / "clinical.csv")])
    assert res.exit_code == 1 and "not a directory" in res.output
    bad = tmp_path / "clin.csv"
    bad.write_text("patient,hct\nx,40\n")
    res = runner.invoke(app, ["ingest", str(simdir), "--clinical", str(bad), "-o", str(tmp_path / "o.h5ad")])
    assert res.exit_code == 1 and "sample_id" in res.output


def test_import_flowrbc(tmp_path):
    rng = np.random.default_rng(1)
    p = tmp_path / "flow.h5"
    with h5py.File(p, "w") as f:
        for part, n in (("train", 20), ("test", 5)):
            v = rng.lognormal(np.log(88), 0.13, (n, 40))
            f[f"{part}_data"] = np.stack([v, 0.33 * v], -1)
            f[f"{part}_labels"] = rng.normal(40, 4, n)
    out = tmp_path / "c.h5ad"
    res = runner.invoke(app, ["import-flowrbc", str(p), "-o", str(out)])
    assert res.exit_code == 0, res.output
    assert "25 samples" in res.output and "val 2" in res.output and "test 5" in res.output
    c = read_cohort(out)
    assert c.X.shape == (1000, 2)
    with h5py.File(p, "a") as f:
        del f["test_labels"]
    res = runner.invoke(app, ["import-flowrbc", str(p), "-o", str(tmp_path / "x.h5ad")])
    assert res.exit_code == 1 and "test_labels" in res.output


@pytest.fixture(scope="module")
def cytometer_dir(simdir, tmp_path_factory):
    """The simulated files as a flow cytometer would store them (FSC-A / SSC-A, instrument units)."""
    import shutil

    from tests.instrument_units import to_instrument_units

    out = tmp_path_factory.mktemp("cytometer")
    for f in sorted(simdir.glob("*.fcs")):
        to_instrument_units(f, out / f.name)
    shutil.copy(simdir / "clinical.csv", out / "clinical.csv")
    return out


def test_ingest_instrument_units_refused_by_channel_then_scaled(simdir, cytometer_dir, tmp_path):
    from tests.instrument_units import FACTORS

    d = cytometer_dir
    args = ["ingest", str(d), "--clinical", str(d / "clinical.csv"), "--channel", "volume=FSC-A",
            "--channel", "hemoglobin=SSC-A"]
    res = runner.invoke(app, args + ["-o", str(tmp_path / "none.h5ad")], env={"COLUMNS": "300"})
    assert res.exit_code == 1 and "no usable FCS file (12 skipped)" in res.output
    assert "channel 'FSC-A' (volume) has median" in res.output and "--scale volume=FACTOR" in res.output

    given = tmp_path / "given.h5ad"
    scales = ["--scale", f"volume={FACTORS['volume']}", "--scale", f"hemoglobin={FACTORS['hemoglobin']}"]
    res = runner.invoke(app, args + scales + ["-o", str(given)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "volume scale (given): 0.0009 for every file" in res.output
    plain = tmp_path / "plain.h5ad"
    assert runner.invoke(app, ["ingest", str(simdir), "--clinical", str(simdir / "clinical.csv"), "-o", str(plain)]).exit_code == 0
    a, b = read_cohort(given), read_cohort(plain)
    np.testing.assert_allclose(a.X, b.X, rtol=1e-6)
    assert (a.samples["scale_volume"] == FACTORS["volume"]).all() and "scale_volume" not in b.samples


def test_ingest_scale_from_clinical_mcv_and_mch(cytometer_dir, tmp_path):
    from tests.instrument_units import FACTORS

    d = cytometer_dir
    out = tmp_path / "derived.h5ad"
    args = ["ingest", str(d), "--clinical", str(d / "clinical.csv"), "--channel", "volume=FSC-A",
            "--channel", "hemoglobin=SSC-A", "--scale-from-clinical"]
    res = runner.invoke(app, args + ["-o", str(out)], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "volume scale (clinical mcv): mean" in res.output and "CV" in res.output and "over 12 files" in res.output
    s = read_cohort(out).samples
    clinical = pd.read_csv(d / "clinical.csv").set_index("sample_id").loc[s.index]
    # each file's gated cells now have the analyser's MCV and MCH as their means
    np.testing.assert_allclose(s["qc_mcv"], clinical["mcv"], rtol=2e-3)
    np.testing.assert_allclose(s["qc_mch"], clinical["mch"], rtol=2e-3)
    # and the factors are the instrument's, up to the sampling noise of 120 cells
    np.testing.assert_allclose(s["scale_volume"], FACTORS["volume"], rtol=0.05)
    np.testing.assert_allclose(s["scale_hemoglobin"], FACTORS["hemoglobin"], rtol=0.05)
    assert s["scale_volume"].std() > 0  # per file, not one factor for all

    res = runner.invoke(app, args + ["--scale", "volume=0.001", "-o", str(tmp_path / "x.h5ad")])
    assert res.exit_code == 1 and "choose one" in res.output
    no_mcv = tmp_path / "clin.csv"
    pd.read_csv(d / "clinical.csv").drop(columns=["mcv", "mch"]).to_csv(no_mcv, index=False)
    res = runner.invoke(app, ["ingest", str(d), "--clinical", str(no_mcv), "--scale-from-clinical",
                              "--channel", "volume=FSC-A", "--channel", "hemoglobin=SSC-A"])
    assert res.exit_code == 1 and "needs an 'mcv' and/or 'mch' column" in res.output


@pytest.mark.filterwarnings("ignore:.*off by one")  # data set 0's $ENDDATA, as the FC500 writes it
def test_ingest_reads_the_data_set_asked_for(simdir, tmp_path):
    """Each file: an FC500-like scatter data set 0, then the simulated file as data set 1."""
    from tests.io.fcs_builders import fc500_like

    d = tmp_path / "two"
    d.mkdir()
    for f in sorted(simdir.glob("*.fcs")):
        (d / f.name).write_bytes(fc500_like(n=50, second=f.read_bytes())[0])
    args = ["ingest", str(d), "--clinical", str(simdir / "clinical.csv")]
    res = runner.invoke(app, args + ["-o", str(tmp_path / "none.h5ad")], env={"COLUMNS": "300"})
    assert res.exit_code == 1 and "no channel found for volume" in res.output
    res = runner.invoke(app, args + ["--dataset", "1", "-o", str(tmp_path / "one.h5ad")])
    assert res.exit_code == 0, res.output
    plain = tmp_path / "plain.h5ad"
    assert runner.invoke(app, ["ingest", str(simdir), *args[2:], "-o", str(plain)]).exit_code == 0
    np.testing.assert_array_equal(read_cohort(tmp_path / "one.h5ad").X, read_cohort(plain).X)


def test_ingest_names_every_channel_out_of_range_on_one_line_per_file(simdir, tmp_path):
    """FSC-A 11x and SSC-A 40x fL and pg: SSC-A is far outside the RBC gate's range, FSC-A
    only outside it, and each file's one line names both."""
    from tests.instrument_units import to_instrument_units

    d = tmp_path / "cyt"
    d.mkdir()
    for f in sorted(simdir.glob("*.fcs"))[:3]:
        to_instrument_units(f, d / f.name, {"volume": 1 / 11, "hemoglobin": 1 / 40})
    res = runner.invoke(app, ["ingest", str(d), "--clinical", str(simdir / "clinical.csv"), "--channel",
                              "volume=FSC-A", "--channel", "hemoglobin=SSC-A", "-o", str(tmp_path / "x.h5ad")],
                        env={"COLUMNS": "100"})
    lines = [line for line in res.output.splitlines() if "skipped:" in line]
    assert res.exit_code == 1 and len(lines) == 3, res.output
    for line, f in zip(lines, sorted(d.glob("*.fcs"))):
        assert f"skipped: {f}: channel 'FSC-A' (volume) has median" in line
        assert "outside the 20-250 fL the RBC gate accepts" in line and "channel 'SSC-A' (hemoglobin)" in line
