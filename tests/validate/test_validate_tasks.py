"""Every validation task at ``toy`` size: result structure, finite metrics, and — for the
tasks where a few steps suffice — that the models beat the trivial baseline."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from flowrbc.validate import Context, TaskResult, run_task, task_names, write_results

from tests.validate.test_validate_data import write_celeba, write_mnist, write_modelnet


def toy(name: str, **kw) -> TaskResult:
    return run_task(name, Context(size="toy", device="cpu", **kw))


def check_structure(result: TaskResult, name: str) -> None:
    assert result.task == name and result.size == "toy"
    assert result.rows, "a task must produce at least one row"
    assert result.data and result.protocol
    for row in result.rows:
        assert math.isfinite(row.metric), (row.model, row.metric)
        assert math.isfinite(row.baseline)
        assert row.wall_s >= 0 and row.depth >= 0
        assert row.norm in ("none", "layer", "feature", "set")


@pytest.mark.parametrize(
    "name", ["normal-var", "digits-var", "point-cloud", "hematocrit", "anemia", "image-reconstruction", "centroids"]
)
def test_task_runs_at_toy_size(name):
    result = toy(name)
    check_structure(result, name)
    assert result.real_data is False  # no --data-dir: the offline substitute, said plainly
    json.dumps(result.to_dict())  # JSON-able (no NaN, no numpy scalars)


def test_set_anomaly_beats_chance():
    result = toy("set-anomaly")
    check_structure(result, "set-anomaly")
    assert result.rows[0].baseline == pytest.approx(1 / 6)
    assert all(r.beats_baseline for r in result.rows), [(r.model, r.metric) for r in result.rows]


def test_mbc_consistency_matches_the_papers_table():
    result = toy("mbc-consistency")
    verdict = {r.model: r.extra["MBC"] for r in result.rows}
    assert all(v == "pass" for k, v in verdict.items() if k.startswith("SSE"))
    assert verdict["Deep Sets (sum)"] == verdict["Deep Sets (mean)"] == "pass"
    assert verdict["Deep Sets (original, x - mean)"] == "FAIL"
    assert verdict["Set Transformer (full attention)"] == verdict["Set Transformer (ISAB)"] == "FAIL"
    assert verdict["Deep Sets++"] == "FAIL"  # set norm uses whole-set statistics


def test_image_reconstruction_chunks_give_the_same_reconstruction():
    result = toy("image-reconstruction")
    for row in result.rows:
        assert row.extra["max|Δ|"] < 1e-4
        assert row.extra["mse_chunked"] == pytest.approx(row.metric, rel=1e-4)


def test_centroids_report_every_set_size():
    result = toy("centroids")
    for row in result.rows:
        assert {"acc@1", "acc@5", "acc@20", "acc@100", "acc@all"} <= set(row.extra)
        assert row.metric == row.extra["acc@all"]


def test_model_filter_and_unknown_task():
    result = run_task("mbc-consistency", Context(size="toy", families=("slot_set",)))
    assert result.rows and all(r.model.startswith("SSE") for r in result.rows)
    with pytest.raises(ValueError, match="unknown"):
        run_task("no-such-task", Context(size="toy"))
    with pytest.raises(ValueError, match="size"):
        Context(size="huge")


def test_results_json_is_written_atomically(tmp_path):
    result = toy("mbc-consistency")
    path = write_results([result], tmp_path / "out")
    data = json.loads(path.read_text())
    assert data[0]["task"] == "mbc-consistency" and len(data[0]["rows"]) == len(result.rows)
    assert [p.name for p in path.parent.iterdir()] == ["validate.json"]  # no temp file left


def test_registry_lists_every_task():
    assert task_names() == [
        "normal-var", "digits-var", "point-cloud", "set-anomaly", "hematocrit", "anemia",
        "image-reconstruction", "centroids", "mbc-consistency",
    ]  # fmt: skip


# ---------------------------------------------------------------- real layouts, end to end
def test_digits_var_reads_mnist_and_shows_paper_figures(tmp_path):
    (tmp_path / "mnist").mkdir()
    write_mnist(tmp_path / "mnist", n_train=40, n_test=20, side=8)
    result = toy("digits-var", data_dir=tmp_path)
    assert result.real_data and "MNIST idx" in result.data
    row = {(r.model, r.depth): r for r in result.rows}[("Deep Sets", 3)]
    assert row.paper == pytest.approx(0.4520)


def test_point_cloud_reads_modelnet40(tmp_path):
    (tmp_path / "modelnet40").mkdir()
    write_modelnet(tmp_path / "modelnet40", n=(20, 8), points=100, classes=4)
    result = toy("point-cloud", data_dir=tmp_path)
    assert result.real_data and "ModelNet40" in result.data
    assert result.rows[0].paper == pytest.approx(0.7755)  # Deep Sets, 3 layers


def test_set_anomaly_reads_celeba(tmp_path):
    (tmp_path / "celeba").mkdir()
    write_celeba(tmp_path / "celeba")
    result = toy("set-anomaly", data_dir=tmp_path)
    assert result.real_data and "CelebA" in result.data
    assert math.isfinite(result.rows[0].metric)


def test_hematocrit_reads_flowrbc_h5(tmp_path):
    import h5py

    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / "flowrbc.h5", "w") as f:
        for part, n in (("train", 40), ("test", 10)):
            cells = np.stack([rng.normal(90, 10, (n, 60)), rng.normal(30, 3, (n, 60))], axis=-1)
            f[f"{part}_data"] = cells.astype(np.float32)
            f[f"{part}_labels"] = rng.normal(40, 4, n).astype(np.float32)
    result = toy("hematocrit", data_dir=tmp_path)
    assert result.real_data and result.rows[0].paper is not None
    assert result.rows[0].paper == pytest.approx(19.5882)  # Deep Sets++, 3 blocks (Table 2)
