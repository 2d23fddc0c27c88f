"""Import of the Flow-RBC HDF5 layout."""

import h5py
import numpy as np
import pytest

from flowrbc.errors import CohortError
from flowrbc.io import flowrbc_h5
from flowrbc.io.flowrbc_h5 import import_flowrbc_h5


def _write(path, n_train=30, n_test=8, cells=50, labels_2d=False):
    rng = np.random.default_rng(0)
    data = {}
    for part, n in (("train", n_train), ("test", n_test)):
        v = rng.lognormal(np.log(88), 0.13, (n, cells))
        x = np.stack([v, v * 0.335], axis=-1)  # (n, cells, 2)
        y = rng.normal(42, 4, (n, 1) if labels_2d else n)
        data[part] = (x, y)
    with h5py.File(path, "w") as f:
        for part, (x, y) in data.items():
            f[f"{part}_data"] = x
            f[f"{part}_labels"] = y
    return data


def test_import_layout_and_values(tmp_path, monkeypatch):
    monkeypatch.setattr(flowrbc_h5, "_CHUNK", 7)  # several chunks per set
    data = _write(tmp_path / "h.h5", labels_2d=True)
    c = import_flowrbc_h5(tmp_path / "h.h5")
    assert c.n_samples == 38 and c.X.shape == (38 * 50, 2)
    s = c.samples
    assert (s["split"] == "test").sum() == 8 and (s["split"] == "val").sum() == 3 and (s["split"] == "train").sum() == 27
    assert (s["split"].iloc[30:] == "test").all() and s.index[30] == "test-000000"
    np.testing.assert_allclose(c.sample_cells(4), data["train"][0][4].astype(np.float32))
    np.testing.assert_allclose(c.sample_cells(31), data["test"][0][1].astype(np.float32))
    np.testing.assert_allclose(s["hematocrit"].iloc[30:], data["test"][1].ravel())
    np.testing.assert_allclose(s["qc_mcv"].iloc[0], data["train"][0][0, :, 0].mean(), rtol=1e-5)
    assert c.roles == {"volume": "RBC Volume", "hemoglobin": "RBC Hb"}
    # deterministic val split
    again = import_flowrbc_h5(tmp_path / "h.h5")
    assert (again.samples["split"] == s["split"]).all()


def test_max_samples(tmp_path):
    _write(tmp_path / "h.h5")
    c = import_flowrbc_h5(tmp_path / "h.h5", max_samples=5)
    assert c.n_samples == 10 and list(c.samples.index[:2]) == ["train-000000", "train-000001"]


def test_bad_layouts(tmp_path):
    p = tmp_path / "bad.h5"
    with h5py.File(p, "w") as f:
        f["train_data"] = np.zeros((3, 4, 2))
        f["train_labels"] = np.zeros(3)
        f["test_data"] = np.zeros((2, 4, 2))
    with pytest.raises(CohortError, match=r"bad\.h5.*test_labels"):
        import_flowrbc_h5(p)
    with h5py.File(p, "w") as f:
        f["train_data"] = np.zeros((3, 4, 3))
        f["train_labels"] = np.zeros(3)
        f["test_data"] = np.zeros((2, 4, 2))
        f["test_labels"] = np.zeros(2)
    with pytest.raises(CohortError, match=r"train_data has shape \(3, 4, 3\)"):
        import_flowrbc_h5(p)
    with h5py.File(p, "w") as f:
        f["train_data"] = np.zeros((3, 4, 2))
        f["train_labels"] = np.zeros(4)
        f["test_data"] = np.zeros((2, 4, 2))
        f["test_labels"] = np.zeros(2)
    with pytest.raises(CohortError, match="train_labels has shape"):
        import_flowrbc_h5(p)
    txt = tmp_path / "text.h5"
    txt.write_text("hello")
    with pytest.raises(CohortError, match="not an HDF5"):
        import_flowrbc_h5(txt)
