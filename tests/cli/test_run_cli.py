"""flowrbc train / predict / evaluate through the typer app."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from flowrbc.cli import app
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.io.cohort import write_cohort
from flowrbc.synthetic.simulate import write_simulated

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_cohort(synthetic_cohort(n_patients=80, n_cells=48, seed=4), root / "cohort.h5ad")
    out = runner.invoke(app, ["train", str(root / "cohort.h5ad"), "--epochs", "1", "--width", "16", "--depth", "1",
                              "--set-size", "32", "--batch-size", "16", "--device", "cpu", "--out", str(root / "runs" / "a")])
    assert out.exit_code == 0, out.output
    write_simulated(root / "fcs", n_patients=2, n_cells=300, seed=1)
    return root, out.output


def test_train_prints_model_baseline_bound_and_paired_difference(trained):
    root, output = trained
    assert "baseline" in output and "bound" in output and "coverage" in output
    assert "Δ paired" in output and " ± " in output
    assert (root / "runs" / "a" / "learning_curves.png").is_file()
    assert (root / "runs" / "a" / "anemia_reliability.png").is_file()


def test_train_sizes_the_builtin_cohort_and_scores_a_fresh_one(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWRBC_CACHE", str(tmp_path / "cache"))
    out = runner.invoke(app, ["train", "--patients", "60", "--cells", "40", "--fresh", "50", "--epochs", "1",
                              "--width", "8", "--depth", "1", "--set-size", "16", "--device", "cpu",
                              "--out", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    assert "fresh cohort" in out.output and "50 samples" in out.output
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any("-p60-c40-" in n for n in cached) and any("-p50-c40-" in n for n in cached)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["fresh"]["n"] == 50 and "mse" in metrics["fresh"]["paired"]["hematocrit"]
    # the model given the exact population parameters, learned from the same training patients
    from flowrbc.synthetic.reference import exact_population_reference
    from flowrbc.io.builtin import FRESH_SEED, load_default_cohort

    cohort, fresh = load_default_cohort(60, 40, 0), load_default_cohort(50, 40, FRESH_SEED)
    ref = exact_population_reference(cohort.samples, 0, fresh.samples, FRESH_SEED)["hematocrit"]
    y = fresh.samples["hematocrit"].to_numpy()
    reported = metrics["fresh"]["reference"]["model"]["hematocrit"]["mse"]
    assert abs(reported - np.mean((ref - y) ** 2)) < 1e-9 * reported
    assert "exact population parameters" in out.output


def test_train_lean_stores_the_option_and_matches_the_default_model(tmp_path, trained):
    """--lean changes what backward keeps, not the model: same seed, same first epoch."""
    import torch

    root, _ = trained
    args = ["train", str(root / "cohort.h5ad"), "--epochs", "1", "--width", "16", "--depth", "2", "--set-size", "32",
            "--batch-size", "16", "--device", "cpu", "--set-only"]
    runs = {}
    for lean in (False, True):
        out = runner.invoke(app, args + ["--out", str(tmp_path / str(lean))] + (["--lean"] if lean else []))
        assert out.exit_code == 0, out.output
        runs[lean] = torch.load(tmp_path / str(lean) / "model.pt", weights_only=True)
    assert runs[True]["model_config"]["lean"] is True and runs[False]["model_config"]["lean"] is False
    for key, value in runs[False]["state_dict"].items():
        torch.testing.assert_close(runs[True]["state_dict"][key], value, rtol=1e-4, atol=1e-5)


def test_train_refuses_builtin_sizes_for_a_cohort_file(trained):
    root, _ = trained
    out = runner.invoke(app, ["train", str(root / "cohort.h5ad"), "--patients", "100"])
    assert out.exit_code == 1 and "built-in cohort" in out.output


def test_predict_json_and_a_bad_file_among_good_ones(trained):
    root, _ = trained
    (root / "fcs" / "broken.fcs").write_text("not an FCS file")
    model = str(root / "runs" / "a" / "model.pt")
    out = runner.invoke(app, ["predict", str(root / "fcs"), "--model", model, "--format", "json"])
    assert out.exit_code == 1
    rows = json.loads(out.stdout)
    assert len(rows) == 2 and all(r["hematocrit"] > 0 for r in rows)
    assert "broken.fcs" in out.stderr and out.stderr.count("error:") == 1
    again = runner.invoke(app, ["predict", str(root / "fcs" / "S*.fcs"), "--model", model, "--format", "csv"])
    assert again.exit_code == 0
    assert again.stdout.splitlines()[0].startswith("file,hematocrit,")
    assert len(again.stdout.splitlines()) == 3


def test_predict_without_model_says_what_to_do(trained, tmp_path, monkeypatch):
    root, _ = trained
    monkeypatch.chdir(tmp_path)
    out = runner.invoke(app, ["predict", str(next((root / "fcs").glob("S*.fcs")))])
    assert out.exit_code == 1
    assert "no model at runs/latest/model.pt: run `flowrbc train` first" in out.stderr


def test_evaluate_json(trained):
    root, _ = trained
    out = runner.invoke(app, ["evaluate", str(root / "runs" / "a" / "model.pt"), str(root / "cohort.h5ad"),
                              "--split", "all", "--format", "json"])
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    assert result["n"] == 80 and "mse" in result["metrics"]["hematocrit"]


def test_embed_writes_patient_anndata(trained):
    import anndata

    root, _ = trained
    out = runner.invoke(app, ["embed", str(root / "runs" / "a" / "model.pt"), str(root / "cohort.h5ad"),
                              "-o", str(root / "patients.h5ad")])
    assert out.exit_code == 0, out.output
    adata = anndata.read_h5ad(root / "patients.h5ad")
    assert adata.n_obs == 80 and adata.X.shape[1] > 0
    assert "X_umap" in adata.obsm and "pred_hematocrit" in adata.obs
    assert (root / "patients.png").is_file()


def test_predict_sex_and_age_options(trained):
    root, _ = trained
    model = str(root / "runs" / "a" / "model.pt")
    fcs = str(next((root / "fcs").glob("S*.fcs")))
    out = runner.invoke(app, ["predict", fcs, "--model", model, "--format", "json", "--sex", "f", "--age", "40"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.stdout)[0]
    assert row["sex"] == "F" and row["age"] == 40.0 and "covariates_unknown" not in row["qc_flags"]
    table = runner.invoke(app, ["predict", fcs, "--model", model, "--sex", "M"])
    assert table.exit_code == 0 and "sex, age" in table.stdout
    bad = runner.invoke(app, ["predict", fcs, "--model", model, "--sex", "X"])
    assert bad.exit_code == 1 and "--sex 'X': use M or F" in bad.stderr


def _piped(args: list[str]) -> str:
    """stdout of ``flowrbc ARGS`` run as in ``| cat``: a pipe, no terminal, 80 columns."""
    env = {**os.environ, "COLUMNS": "80"}
    res = subprocess.run([sys.executable, "-m", "flowrbc", *args], capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "…" not in res.stdout and max(len(line) for line in res.stdout.splitlines()) <= 80, res.stdout
    return res.stdout


def test_predict_instrument_units_explain_then_scale_recorded_in_every_format(trained, tmp_path):
    from tests.instrument_units import FACTORS, to_instrument_units

    root, _ = trained
    model = str(root / "runs" / "a" / "model.pt")
    sources = sorted((root / "fcs").glob("S*.fcs"))
    for i, f in enumerate(sources):  # long export names, as cytometers write them
        to_instrument_units(f, tmp_path / f"2026-12-02_RBC_panel_tube_{i:03d}_specimen_{f.stem}_export.fcs")
    mapped = ["--channel", "volume=FSC-A", "--channel", "hemoglobin=SSC-A"]
    out = runner.invoke(app, ["predict", str(tmp_path), "--model", model, *mapped])
    assert out.exit_code == 1 and out.stderr.count("error:") == 2 and "Traceback" not in out.output
    assert "channel 'FSC-A' (volume) has median" in out.stderr and "--scale volume=FACTOR" in out.stderr

    scales = ["--scale", f"volume={FACTORS['volume']}", "--scale", f"hemoglobin={FACTORS['hemoglobin']}"]
    out = runner.invoke(app, ["predict", str(tmp_path), "--model", model, *mapped, *scales, "--format", "json"])
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    direct = json.loads(runner.invoke(app, ["predict", *map(str, sources), "--model", model, "--format", "json"]).stdout)
    for r, d in zip(rows, direct):
        assert r["scale_volume"] == FACTORS["volume"] and r["scale_hemoglobin"] == FACTORS["hemoglobin"]
        assert r["hematocrit"] == pytest.approx(d["hematocrit"], rel=1e-4)
    csv = runner.invoke(app, ["predict", str(tmp_path), "--model", model, *mapped, *scales, "--format", "csv"])
    header = csv.stdout.splitlines()[0].split(",")
    assert "scale_volume" in header and "scale_hemoglobin" in header
    table = _piped(["predict", str(tmp_path), "--model", model, *mapped, *scales])
    assert "scaled: volume ×0.0009, hemoglobin ×0.0003" in " ".join(table.split())
    for r in rows:
        assert f"{r['hematocrit']:.1f} ({r['hematocrit_low']:.1f}–{r['hematocrit_high']:.1f})" in table
        assert f"({r['anemia_probability']:.2f})" in table


def test_evaluate_table_at_80_columns_matches_json(trained):
    from flowrbc.cli._format import number

    root, _ = trained
    args = ["evaluate", str(root / "runs" / "a" / "model.pt"), str(root / "cohort.h5ad"), "--split", "all"]
    result = json.loads(runner.invoke(app, args + ["--format", "json"]).stdout)
    table = _piped(args)
    rows = {(t[0], t[1]): t[2] for t in (line.replace("│", " ").split() for line in table.splitlines()) if len(t) == 3}
    for target, metrics in result["metrics"].items():
        for key, value in metrics.items():
            assert rows[(target, key)] == number(value), (target, key)


def test_train_defaults_to_the_targets_a_cohort_has(tmp_path):
    """A cohort with hematocrit and no anemia column (as `import-flowrbc` writes) trains
    hematocrit alone, and the printed legend speaks only of it."""
    cohort = synthetic_cohort(n_patients=60, n_cells=48, seed=6)
    cohort.samples = cohort.samples.drop(columns=["anemia", "hemoglobin"])
    write_cohort(cohort, tmp_path / "hct.h5ad")
    out = runner.invoke(app, ["train", str(tmp_path / "hct.h5ad"), "--epochs", "1", "--width", "16", "--depth", "1",
                              "--set-size", "32", "--device", "cpu", "--out", str(tmp_path / "run")])
    assert out.exit_code == 0, out.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["targets"] == ["hematocrit"] and set(metrics["test"]["model"]) == {"hematocrit"}
    legend = next(line for line in out.output.splitlines() if line.startswith("model:"))
    assert "hematocrit" in legend and "anemia" not in legend
