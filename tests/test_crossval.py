"""Cross-validation (``flowrbc train --folds``): folds, out-of-fold predictions, paired
statistics, the kept model, kill + resume."""

import csv
import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from flowrbc.crossval import assign_folds, crossval_block, crossval_cohort, split_column
from flowrbc.errors import FlowrbcError
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.train import TrainConfig

TINY = dict(width=16, depth=1, set_size=32, epochs=2, batch_size=16, device="cpu", seed=5, coverage=0.8)
FOLDS = 3


@pytest.fixture(scope="module")
def cohort():
    c = synthetic_cohort(n_patients=60, n_cells=48, seed=21)
    c.samples["patient"] = [f"P{i // 3}" if i % 4 else None for i in range(c.n_samples)]  # some samples alone
    return c


@pytest.fixture(scope="module")
def run(cohort, tmp_path_factory):
    out = tmp_path_factory.mktemp("cv") / "run"
    return crossval_cohort(cohort, TrainConfig(**TINY), out, folds=FOLDS, plots=False)


def test_folds_partition_the_samples_stratified_and_keep_groups_whole(cohort):
    fold = assign_folds(cohort, 4, seed=1)
    assert sorted(set(fold)) == [0, 1, 2, 3] and np.bincount(fold).max() - np.bincount(fold).min() <= 1
    anemic = cohort.samples["anemia"].to_numpy(bool)
    per_fold = [int(anemic[fold == k].sum()) for k in range(4)]
    assert max(per_fold) - min(per_fold) <= 1  # stratified by the anemia label
    np.testing.assert_array_equal(fold, assign_folds(cohort, 4, seed=1))  # deterministic
    assert not np.array_equal(fold, assign_folds(cohort, 4, seed=2))  # another repeat, other folds

    grouped = assign_folds(cohort, 4, seed=1, group="patient")
    patient = cohort.samples["patient"].to_numpy(object)
    for p in {p for p in patient if p is not None}:
        assert len(set(grouped[patient == p])) == 1  # several samples of one patient: one fold
    for k in range(4):
        split = split_column(cohort, grouped, k, seed=1, group="patient")
        assert set(np.flatnonzero(split == "test")) == set(np.flatnonzero(grouped == k))
        val = split == "val"
        assert 0.10 < val.sum() / (split != "test").sum() < 0.22  # about 15 % of the training part
        for p in {p for p in patient if p is not None}:
            assert len(set(split[patient == p])) == 1  # a patient's samples share train, val or test
    kept = split_column(cohort, grouped, None, seed=1, group="patient")
    assert "test" not in set(kept) and (kept == "val").any()


def test_bad_fold_options_are_one_line_errors(cohort, tmp_path):
    with pytest.raises(FlowrbcError, match="--folds 1: at least 2"):
        assign_folds(cohort, 1)
    with pytest.raises(FlowrbcError, match="--group ward: the cohort's sample table has no 'ward' column"):
        assign_folds(cohort, 3, group="ward")
    with pytest.raises(FlowrbcError, match="--folds 61: the cohort has only 60 samples with cells"):
        assign_folds(cohort, 61)
    with pytest.raises(FlowrbcError, match="no cross-validation run here"):
        crossval_cohort(cohort, TrainConfig(**TINY), tmp_path / "none", folds=3, resume=True)


def test_out_of_fold_file_has_one_row_per_sample_and_target(cohort, run):
    with open(run.run_dir / "oof.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["sample_id", "repeat", "fold", "target", "truth", "model", "baseline", "low", "high", "raw"]
    ids = list(cohort.samples.index.astype(str))
    for target in ("hematocrit", "anemia"):
        mine = [r for r in rows if r["target"] == target]
        assert sorted(r["sample_id"] for r in mine) == sorted(ids)  # every sample once
    fold = assign_folds(cohort, FOLDS, seed=TINY["seed"])
    assert all(int(r["fold"]) == fold[ids.index(r["sample_id"])] for r in rows)
    hct = [r for r in rows if r["target"] == "hematocrit"]
    assert all(float(r["low"]) < float(r["model"]) < float(r["high"]) for r in hct)
    assert all(0.0 <= float(r["model"]) <= 1.0 for r in rows if r["target"] == "anemia")


def test_paired_se_is_the_one_computed_from_the_out_of_fold_file(run):
    from flowrbc.evaluation import paired_auroc

    with open(run.run_dir / "oof.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    get = lambda target, col: np.array([float(r[col]) for r in rows if r["target"] == target])  # noqa: E731
    y, m, b = get("hematocrit", "truth"), get("hematocrit", "model"), get("hematocrit", "baseline")
    d = (m - y) ** 2 - (b - y) ** 2
    reported = run.summary["paired"]["hematocrit"]["mse"]
    assert reported["n"] == len(y) == 60
    assert reported["diff"] == pytest.approx(d.mean(), rel=1e-12)
    assert reported["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(len(d)), rel=1e-12)
    coverage = np.mean((get("hematocrit", "low") <= y) & (y <= get("hematocrit", "high")))
    assert run.summary["model"]["hematocrit"]["coverage"] == pytest.approx(coverage)
    a, p, q = get("anemia", "truth"), get("anemia", "model"), get("anemia", "baseline")
    auroc = paired_auroc(a, p, q)
    assert run.summary["paired"]["anemia"]["auroc"]["se"] == pytest.approx(auroc["se"], rel=1e-12)
    per_fold = run.summary["runs"][0]["folds"]
    assert sum(f["n"] for f in per_fold) == 60
    values = [f["paired"]["hematocrit"]["mse"]["diff"] for f in per_fold]
    spread = run.summary["runs"][0]["between_folds"]["hematocrit"]["paired_mse"]
    assert spread["sd"] == pytest.approx(float(np.std(values, ddof=1)))


def test_the_kept_model_trains_on_every_patient_and_says_its_figures_are_cross_validated(cohort, run, tmp_path):
    from flowrbc.checkpoint import load_checkpoint
    from flowrbc.evaluate import evaluate_cohort
    from flowrbc.io.cohort import write_cohort
    from flowrbc.predictor import Predictor

    metrics = json.loads((run.run_dir / "metrics.json").read_text())
    assert metrics["n"]["test"] == 0 and metrics["n"]["train"] + metrics["n"]["val"] == 60
    assert "test" not in metrics and metrics["source"].startswith("cross-validation")
    assert metrics["crossval"]["paired"] == run.summary["paired"]
    payload = load_checkpoint(run.run_dir / "model.pt")
    assert payload["metrics"]["source"].startswith("cross-validation") and payload["complete"]
    predictor = Predictor.load(run.run_dir / "model.pt")
    assert crossval_block(predictor)["n"] == 60
    assert crossval_block(predictor, cohort)["in_sample"] is True
    write_cohort(cohort, tmp_path / "cohort.h5ad")
    from flowrbc.io.cohort import read_cohort

    result = evaluate_cohort(run.run_dir / "model.pt", read_cohort(tmp_path / "cohort.h5ad"), split="all")
    assert result["crossval"]["folds"] == FOLDS and result["crossval"]["in_sample"] is True


def test_a_run_killed_in_a_fold_resumes_there_and_ends_identical(cohort, run, tmp_path):
    from flowrbc.checkpoint import load_checkpoint

    class Killed(Exception):
        pass

    def kill(part, state):
        if part == "r0-f1" and state.epoch == 1:
            raise Killed

    out = tmp_path / "cut"
    with pytest.raises(Killed):
        crossval_cohort(cohort, TrainConfig(**TINY), out, folds=FOLDS, plots=False, on_epoch_end=kill)
    assert (out / "folds" / "r0-f0" / "predictions.csv").is_file()
    assert not (out / "folds" / "r0-f1" / "predictions.csv").exists()
    seen = []
    resumed = crossval_cohort(cohort, TrainConfig(**TINY), out, folds=FOLDS, plots=False, resume=True,
                              on_epoch_end=lambda part, state: seen.append((part, state.epoch)))
    assert seen[0] == ("r0-f1", 2) and "r0-f0" not in {p for p, _ in seen}  # fold 1 at its next epoch; fold 0 kept
    assert (out / "oof.csv").read_text() == (run.run_dir / "oof.csv").read_text()
    strip = lambda s: {k: v for k, v in s.items() if k != "wall_time_s"}  # noqa: E731
    assert strip(resumed.summary) == strip(run.summary)
    a, b = load_checkpoint(out / "model.pt")["state_dict"], load_checkpoint(run.run_dir / "model.pt")["state_dict"]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    with pytest.raises(FlowrbcError, match="options differ from the interrupted run \\(folds\\)"):
        crossval_cohort(cohort, TrainConfig(**TINY), out, folds=FOLDS + 1, plots=False, resume=True)


def test_train_folds_repeats_on_the_command_line(tmp_path):
    from flowrbc.cli import app
    from flowrbc.io.cohort import write_cohort

    runner = CliRunner()
    write_cohort(synthetic_cohort(n_patients=40, n_cells=40, seed=22), tmp_path / "cohort.h5ad")
    args = ["train", str(tmp_path / "cohort.h5ad"), "--epochs", "1", "--width", "8", "--depth", "1", "--set-size",
            "16", "--device", "cpu", "--coverage", "0.8", "--out", str(tmp_path / "cv")]
    out = runner.invoke(app, args + ["--folds", "2", "--repeats", "2"])
    assert out.exit_code == 0, out.output
    assert "cross-validated, out of fold: 40 patients, 2 folds" in out.output and "between repeats" in out.output
    with open(tmp_path / "cv" / "oof.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 2 * 2 * 40  # repeats × targets × samples
    evaluated = runner.invoke(app, ["evaluate", str(tmp_path / "cv" / "model.pt"), str(tmp_path / "cohort.h5ad")])
    assert evaluated.exit_code == 0 and "cross-validated on its training cohort: 2 folds × 2 repeats" in evaluated.output
    for bad, message in ((["--repeats", "2"], "--repeats and --group go with --folds K"),
                         (["--folds", "1"], "--folds 1: at least 2"),
                         (["--folds", "2", "--group", "ward"], "no 'ward' column")):
        failed = runner.invoke(app, args + bad)
        assert failed.exit_code != 0 and message in failed.output and "Traceback" not in failed.output
