"""Prediction on FCS files from the simulator, with a tiny trained checkpoint."""

import subprocess
import sys

import numpy as np
import pytest

from flowrbc.errors import ChannelError, FlowrbcError
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.io.fcs import read_fcs_data, write_fcs_arrays
from flowrbc.predict import expand_inputs, load_model, predict_file
from flowrbc.synthetic.simulate import write_simulated
from flowrbc.train import TrainConfig, train_cohort

TINY = dict(width=16, depth=1, set_size=64, epochs=1, batch_size=16, device="cpu")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    cohort = synthetic_cohort(n_patients=80, n_cells=64, seed=3)
    result = train_cohort(cohort, TrainConfig(**TINY), root / "runs" / "tiny", plots=False)
    files = root / "fcs"
    write_simulated(files, n_patients=3, n_cells=300, seed=7)
    return result.run_dir / "model.pt", files


def test_prediction_fields_and_determinism(run):
    model_path, files = run
    model = load_model(model_path)
    path = sorted(files.glob("*.fcs"))[0]
    a = predict_file(model, path, seed=1).to_dict()
    b = predict_file(model, path, seed=1).to_dict()
    assert a == b
    assert a["cells_used"] == 300 and a["draws"] == "all"  # every cell in one set (the default --read all)
    assert a["hematocrit_low"] < a["hematocrit"] < a["hematocrit_high"]
    assert 0.0 <= a["anemia_probability"] <= 1.0
    assert a["anemia"] == (a["anemia_probability"] >= 0.5)
    wider = predict_file(model, path, seed=1, coverage=0.8).to_dict()
    narrower = predict_file(model, path, seed=1, coverage=0.5).to_dict()
    assert narrower["hematocrit_high"] - narrower["hematocrit_low"] <= wider["hematocrit_high"] - wider["hematocrit_low"]


def test_missing_channels_refused_by_name_and_override(run, tmp_path):
    model_path, files = run
    model = load_model(model_path)
    src = read_fcs_data(sorted(files.glob("*.fcs"))[0])
    odd = tmp_path / "odd.fcs"
    same_patient = {k: v for k, v in src.keywords.items() if k.startswith("FLOWRBC_")}  # sex, age
    write_fcs_arrays(odd, src.events, ["FSC-A", "SSC-A"], keywords=same_patient)
    with pytest.raises(ChannelError, match=r"odd.fcs: lacks the model's channels volume \('RBC Volume'\)"):
        predict_file(model, odd)
    mapped = predict_file(model, odd, overrides={"volume": "FSC-A", "hemoglobin": "SSC-A"}, seed=1)
    direct = predict_file(model, sorted(files.glob("*.fcs"))[0], seed=1)
    assert mapped.values == direct.values


def test_qc_flags_for_few_and_shifted_cells(run, tmp_path):
    model_path, _ = run
    model = load_model(model_path)
    rng = np.random.default_rng(0)
    cells = np.column_stack([rng.normal(150, 5, 50), rng.normal(60, 2, 50)]).astype(np.float32)
    path = tmp_path / "odd.fcs"
    write_fcs_arrays(path, cells, ["RBC Volume", "RBC Hb"])
    flags = predict_file(model, path).qc_flags
    assert "too_few_cells" in flags and "outside_training_range" in flags and "far_from_training" in flags
    empty = tmp_path / "debris.fcs"
    write_fcs_arrays(empty, np.full((20, 2), 5.0, np.float32), ["RBC Volume", "RBC Hb"])
    with pytest.raises(FlowrbcError, match="debris.fcs: no events pass the RBC gate"):
        predict_file(model, empty)


def test_covariates_from_keywords_request_or_unknown(run, tmp_path):
    import csv

    model_path, files = run
    model = load_model(model_path)
    path = sorted(files.glob("*.fcs"))[0]
    truth = {r["file"]: r for r in csv.DictReader(open(files / "clinical.csv"))}[path.name]
    from_file = predict_file(model, path, seed=1)
    assert from_file.covariates == {"sex": truth["sex"], "age": float(truth["age"])}
    assert "covariates_unknown" not in from_file.qc_flags
    other_sex = {"M": "F", "F": "M"}[truth["sex"]]
    asked = predict_file(model, path, seed=1, covariates={"sex": other_sex, "age": None})
    assert asked.covariates["sex"] == other_sex and asked.covariates["age"] == float(truth["age"])
    assert asked.values["hematocrit"] != from_file.values["hematocrit"]

    src = read_fcs_data(path)
    bare = tmp_path / "bare.fcs"
    write_fcs_arrays(bare, src.events, src.names)  # no sex/age keywords
    unknown = predict_file(model, bare, seed=1)
    assert unknown.covariates == {"sex": None, "age": None} and "covariates_unknown" in unknown.qc_flags
    cal = model.calibration["hematocrit"]["covariates_unknown"]
    assert unknown.values["hematocrit_high"] - unknown.values["hematocrit"] == pytest.approx(cal["halfwidth"])
    row = unknown.to_dict()
    assert row["sex"] is None and row["age"] is None


def test_expand_inputs(run):
    _, files = run
    assert len(expand_inputs([files])) == 3
    assert len(expand_inputs([str(files / "*.fcs")])) == 3


def test_predict_path_imports_no_heavy_libraries(run):
    model_path, files = run
    code = (
        "import sys\n"
        "from flowrbc.cli import app\n"
        "import flowrbc.cli.run as r\n"
        "from flowrbc.predict import load_model, predict_file\n"
        f"m = load_model({str(model_path)!r})\n"
        f"predict_file(m, {str(sorted(files.glob('*.fcs'))[0])!r})\n"
        "r._print_predictions([], r.Format.json)\n"
        "heavy = [k for k in ('anndata', 'scanpy', 'sklearn', 'pandas', 'matplotlib') if k in sys.modules]\n"
        "print('HEAVY=' + ','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "HEAVY="


def test_all_cells_streams_every_gated_cell_like_the_whole_set(tmp_path):
    """--all-cells: chunked streaming through a slot-set model equals one pass over all cells."""
    import torch

    from flowrbc import pp
    from flowrbc.inputs import decode_outputs

    cohort = synthetic_cohort(n_patients=60, n_cells=64, seed=4)
    config = TrainConfig(**{**TINY, "model": "slot_set", "hybrid": False, "index_inputs": False})  # cells only
    result = train_cohort(cohort, config, tmp_path / "runs" / "sse", plots=False)
    model = load_model(result.run_dir / "model.pt")
    write_simulated(tmp_path / "fcs", n_patients=1, n_cells=10_000, seed=2)  # > one 4096 chunk
    path = next((tmp_path / "fcs").glob("*.fcs"))

    streamed = predict_file(model, path, all_cells=True).to_dict()
    assert streamed["draws"] == "all"

    data = read_fcs_data(path)
    cells = data.events[:, :2].astype(np.float64)
    cells = cells[pp.rbc_gate(cells[:, 0], cells[:, 1])]
    assert streamed["cells_used"] == len(cells)
    cov = torch.from_numpy(model.covariates.encode_raw(model.covariates.values(None, data.keywords)[1][None]))

    def in_one_pass(rows):
        x = torch.from_numpy(model.scaler.transform(rows))[None]  # (1, n, 2)
        with torch.no_grad():
            return float(decode_outputs(model.model(x, covariates=cov), model.targets)["hematocrit"][0])

    whole = in_one_pass(cells)
    assert abs(whole - streamed["hematocrit"]) < 1e-4
    # The check has power: leaving out the cells after the first chunk moves the result more.
    assert abs(whole - in_one_pass(cells[:4096])) > 1e-4


def test_all_cells_reads_every_gated_cell_in_one_set_for_any_family(run):
    """--all-cells: one set of every gated cell, so the seed and the draws change nothing; the
    default model (--read all) reads that way already, a --read sets model reads sets."""
    model_path, files = run
    model = load_model(model_path)
    path = sorted(files.glob("*.fcs"))[0]
    a = predict_file(model, path, all_cells=True, seed=1).to_dict()
    b = predict_file(model, path, all_cells=True, seed=2, draws=3).to_dict()
    assert a["draws"] == "all" and a == dict(b, draws="all")
    assert a == predict_file(model, path, seed=1).to_dict()
    model.set_size = 64  # as a --read sets model of 64-cell sets reads a file
    sets = predict_file(model, path, seed=1).to_dict()
    assert sets["draws"] == 5 and sets["hematocrit"] != a["hematocrit"]


def test_instrument_units_are_refused_by_channel_and_predict_once_scaled(run, tmp_path):
    from tests.instrument_units import FACTORS, to_instrument_units

    model_path, files = run
    model = load_model(model_path)
    src = sorted(files.glob("*.fcs"))[0]
    path = to_instrument_units(src, tmp_path / "cytometer.fcs")
    mapped = {"volume": "FSC-A", "hemoglobin": "SSC-A"}
    with pytest.raises(ChannelError) as info:
        predict_file(model, path, overrides=mapped)
    msg = str(info.value)
    assert msg.startswith(f"{path}: channel 'FSC-A' (volume) has median ") and "\n" not in msg
    assert "fL the model was trained on: it looks uncalibrated" in msg
    assert "--scale volume=FACTOR" in msg and "channel 'SSC-A' (hemoglobin)" in msg and "--scale hemoglobin=FACTOR" in msg

    scaled = predict_file(model, path, overrides=mapped, scales=FACTORS, seed=1)
    direct = predict_file(model, src, seed=1)
    assert scaled.cells_used == direct.cells_used
    for k, v in direct.values.items():
        assert scaled.values[k] == pytest.approx(v, rel=1e-4), k
    row = scaled.to_dict()
    assert row["scale_volume"] == FACTORS["volume"] and row["scale_hemoglobin"] == FACTORS["hemoglobin"]
    assert "scale_volume" not in direct.to_dict()

    wrong = {"volume": FACTORS["volume"] / 10, "hemoglobin": FACTORS["hemoglobin"]}
    with pytest.raises(ChannelError, match=r"cytometer.fcs: no events pass the RBC gate \(300 events\); "
                       r"channel 'FSC-A' x 9e-05 \(volume\) has median [\d.]+, outside the 20-250 fL the RBC gate"):
        predict_file(model, path, overrides=mapped, scales=wrong)
    with pytest.raises(ChannelError, match="--scale platelets: unknown role"):
        predict_file(model, path, overrides=mapped, scales={"platelets": 2.0})


def test_predict_feeds_the_index_features_to_the_set_model(tmp_path):
    """A file's prediction is the set model decoded with [covariates, encoded index features of
    its gated cells]; zeroing the index inputs moves it (the check has power)."""
    import torch

    from flowrbc import pp
    from flowrbc.hybrid import index_features
    from flowrbc.inputs import decoder_inputs, predict_sets_each

    cohort = synthetic_cohort(n_patients=60, n_cells=64, seed=4)
    result = train_cohort(cohort, TrainConfig(**{**TINY, "hybrid": False}), tmp_path / "run", plots=False)
    model = load_model(result.run_dir / "model.pt")
    assert model.index_inputs is not None
    write_simulated(tmp_path / "fcs", n_patients=1, n_cells=500, seed=2)
    path = next((tmp_path / "fcs").glob("*.fcs"))
    got = predict_file(model, path, seed=1, draws=2).values["hematocrit"]

    data = read_fcs_data(path)
    cells = data.events[:, :2].astype(np.float64)
    cells = cells[pp.rbc_gate(cells[:, 0], cells[:, 1])]
    cov = torch.from_numpy(model.covariates.encode_raw(model.covariates.values(None, data.keywords)[1][None]))
    F = index_features(cells[:, 0], cells[:, 1], np.array([0, len(cells)]))[0]
    X = torch.from_numpy(model.scaler.transform(cells))
    offsets = torch.tensor([0, len(cells)])

    def value(side):
        inputs = decoder_inputs(cov, side, 2)
        return float(predict_sets_each(model.model, X, offsets, np.array([0]), model.targets, [inputs],
                                       cells=model.set_size, draws=2, seed=1)[0]["hematocrit"][0])

    side = torch.from_numpy(model.index_inputs.encode(F))
    assert got == pytest.approx(value(side), abs=1e-5)
    assert abs(value(torch.zeros_like(side)) - got) > 1e-3


def test_predict_gates_a_file_as_ingest_does_and_flags_it_alike(run, tmp_path):
    """The prediction's cells are the cohort's cells of the same file (float64 vs the cohort's
    float32), and its sample-level QC flags are the cohort QC's; the cells are not serialised."""
    import pandas as pd

    from flowrbc.io.ingest import ingest_fcs
    from flowrbc.io.sample import load_sample

    model = load_model(run[0])
    rng = np.random.default_rng(5)
    v = rng.normal(90, 9, 150)
    cells = np.column_stack([v, v * rng.normal(33.5, 2.0, 150) / 100])
    outside = [[5.0, 1.0]] * 60 + [[400.0, 30.0], [90.0, 200.0]] + [[np.nan, 30.0]] * 3  # gated out
    events = np.concatenate([cells, outside])[rng.permutation(215)].astype(np.float32)
    folder = tmp_path / "fcs"
    folder.mkdir()
    write_fcs_arrays(folder / "odd.fcs", events, ["RBC Volume", "RBC Hb"], keywords={"FLOWRBC_SEX": "F"})
    pd.DataFrame({"sample_id": ["odd"], "file": ["odd.fcs"], "hematocrit": [40.0]}).to_csv(folder / "c.csv", index=False)
    cohort = ingest_fcs(folder, folder / "c.csv").cohort

    pred = predict_file(model, folder / "odd.fcs", seed=1)
    assert pred.cells.dtype == np.float64 and pred.cells.shape == (150, 2)
    np.testing.assert_array_equal(pred.cells, load_sample(folder / "odd.fcs").cells)
    np.testing.assert_array_equal(pred.cells.astype(np.float32), cohort.sample_cells(0))
    row = cohort.samples.iloc[0]
    assert (pred.n_events, pred.cells_used) == (int(row["n_events"]), int(row["n_gated"])) == (215, 150)
    stored = [k.removeprefix("flag_") for k in row.index if k.startswith("flag_") and row[k]]
    assert stored == ["too_few_cells", "many_gated_out", "nonfinite_events"]
    assert [f for f in pred.qc_flags if f in stored] == stored
    assert "cells" not in pred.to_dict() and "cells=" not in repr(pred)
