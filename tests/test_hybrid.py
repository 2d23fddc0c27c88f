"""The index members of the default predictor: independent stacked MLPs, the blend, the checkpoint."""

import numpy as np
import torch

from flowrbc.hybrid import SET_WEIGHT, IndexModels, StackedMLP, fit_stacked_mlp
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.metrics import moment_features, shape_features
from flowrbc.predict import load_model, predict_file
from flowrbc.synthetic.simulate import write_simulated
from flowrbc.train import TrainConfig, train_cohort

TINY = dict(width=16, depth=1, set_size=64, epochs=1, batch_size=16, device="cpu")


def test_stacked_members_are_independent():
    """Member k's output depends on member k's weights only (one baddbmm serves all)."""
    torch.manual_seed(0)
    net = StackedMLP(members=3, in_features=4, width=8).eval()
    x = torch.randn(3, 5, 4)
    before = net(x)
    with torch.no_grad():
        net.weights[0][1] += 1.0  # member 1, first layer
    after = net(x)
    assert torch.equal(before[0], after[0]) and torch.equal(before[2], after[2])
    assert not torch.allclose(before[1], after[1])


def test_fit_learns_a_smooth_function_and_keeps_the_best_validation_epoch():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(600, 3)).astype(np.float32)
    y = np.sin(Z[:, 0]) + 0.5 * Z[:, 1] ** 2 - 0.5 + 0.1 * rng.normal(size=600)
    train, val = np.arange(400), np.arange(400, 600)
    net = fit_stacked_mlp(Z, y, train, val, members=3, epochs=40, seed=0)
    with torch.no_grad():
        pred = net(torch.from_numpy(Z[val]).expand(3, -1, -1))  # (3, 200)
    mse = ((pred.numpy() - y[val]) ** 2).mean(1)
    assert (mse < 0.25 * y[val].var()).all()  # far better than the mean
    assert len(set(np.round(mse, 6))) == 3  # three different members


def test_blend_weighs_the_set_model_against_the_index_members():
    index = IndexModels(["f"], np.zeros(1), np.ones(1), {})
    index.predict = lambda F, r, e: {"hematocrit": np.array([30.0, 36.0])}
    out = index.blend({"hematocrit": np.array([42.0, 39.0]), "anemia": np.array([0.3, -1.0])},
                      np.zeros((2, 1)), np.zeros((2, 0)), np.zeros((2, 0)))
    np.testing.assert_allclose(out["hematocrit"], [0.5 * 42 + 0.5 * 30, 0.5 * 39 + 0.5 * 36])
    np.testing.assert_array_equal(out["anemia"], [0.3, -1.0])  # binary targets: the set model


def test_predict_file_applies_the_trained_blend(tmp_path):
    """One FCS file: predict's hematocrit = w set model + (1 − w) (MLP ensemble + trees) / 2 with the
    checkpoint's own members, and differs from the set model alone."""
    from flowrbc.io.fcs import read_fcs_data
    from flowrbc import pp

    cohort = synthetic_cohort(n_patients=80, n_cells=64, seed=3)
    result = train_cohort(cohort, TrainConfig(**TINY), tmp_path / "run", plots=False)
    assert result.metrics["predictor"] == "hybrid" and "set_model" in result.metrics["test"]
    model = load_model(result.run_dir / "model.pt")
    assert set(model.index.members) == {"hematocrit"}
    write_simulated(tmp_path / "fcs", n_patients=1, n_cells=400, seed=7)
    path = next((tmp_path / "fcs").glob("*.fcs"))
    blended = predict_file(model, path, seed=1).to_dict()["hematocrit"]
    index, model.index = model.index, None
    alone = predict_file(model, path, seed=1).to_dict()["hematocrit"]

    data = read_fcs_data(path)
    cells = data.events[:, :2].astype(np.float64)
    cells = cells[pp.rbc_gate(cells[:, 0], cells[:, 1])]
    moments, _ = moment_features(cells[:, 0], cells[:, 1], np.array([0, len(cells)]))
    model.index = index
    F, _ = model.index_features(cells, np.array([0, len(cells)]),
                                moment_features(cells[:, 0], cells[:, 1], np.array([0, len(cells)])))
    assert F.shape == (1, moments.shape[1] + len(shape_features(cells[:2, 0], cells[:2, 1], np.array([0, 2]))[1]))
    np.testing.assert_array_equal(F[:, : moments.shape[1]], moments)
    _, raw = model.covariates.values(None, data.keywords)
    members = index.predict(F, raw[None], model.covariates.encode_raw(raw[None]))["hematocrit"][0]
    w = index.set_weight
    assert w == SET_WEIGHT and abs(blended - (w * alone + (1 - w) * members)) < 1e-9
    assert abs(blended - alone) > 1e-3


def test_checkpoint_round_trip_keeps_what_the_members_read(tmp_path):
    """The members' state says whether they read the shape features and the set model's weight;
    a format-1 checkpoint, written before them, is migrated on load: its members read the
    moment features alone and weigh the three members equally."""
    import io

    from flowrbc.checkpoint import _digest, load_checkpoint

    cohort = synthetic_cohort(n_patients=60, n_cells=64, seed=4)
    result = train_cohort(cohort, TrainConfig(**dict(TINY, index_inputs=False)), tmp_path / "run", plots=False)
    model = load_model(result.run_dir / "model.pt")
    again = IndexModels.from_state(model.index.to_state())
    assert again.shape and len(again.feature_names) == len(again.mean) and again.set_weight == SET_WEIGHT
    rng = np.random.default_rng(0)
    v, h = rng.lognormal(4.4, 0.13, 300), rng.lognormal(3.4, 0.15, 300)
    cells, offsets = np.stack([v, h], axis=1), np.array([0, 120, 300])
    moments = moment_features(v, h, offsets)
    assert model.index_features(cells, offsets, moments)[0].shape == (2, len(again.feature_names))

    old = load_checkpoint(result.run_dir / "model.pt")  # written as format 1 would have been
    old["format_version"] = 1
    old["train_config"]["cells"] = old["train_config"].pop("set_size")
    for key in ("shape", "set_weight"):
        old["index_models"].pop(key)
    old.pop("index_inputs")
    old["digest"] = _digest(old)
    buffer = io.BytesIO()
    torch.save(old, buffer)
    (tmp_path / "old.pt").write_bytes(buffer.getvalue())
    migrated = load_model(tmp_path / "old.pt")
    assert not migrated.index.shape and migrated.index.set_weight == 1 / 3 and migrated.index_inputs is None
    assert migrated.set_size == model.set_size
    np.testing.assert_array_equal(migrated.index_features(cells, offsets, moments)[0], moments[0])
