"""``flowrbc validate`` through the typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from flowrbc.cli import app

runner = CliRunner()


def test_validate_toy_json_and_out(tmp_path):
    res = runner.invoke(app, ["validate", "mbc-consistency", "--size", "toy", "--format", "json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    saved = json.loads((tmp_path / "validate.json").read_text())
    assert saved[0]["task"] == "mbc-consistency"
    assert {r["extra"]["MBC"] for r in saved[0]["rows"]} == {"pass", "FAIL"}


def test_validate_table_names_the_data(tmp_path):
    res = runner.invoke(app, ["validate", "mbc-consistency", "--size", "toy", "--model", "slot_set"])
    assert res.exit_code == 0, res.output
    assert "mbc-consistency" in res.output and "offline substitute" in res.output
    assert "Set Transformer" not in res.output  # filtered out by --model


def test_validate_unknown_task_fails_in_one_line():
    res = runner.invoke(app, ["validate", "mnist-sum"])
    assert res.exit_code == 1
    assert "unknown task 'mnist-sum'" in res.output


def test_validate_bad_data_dir_fails_cleanly(tmp_path):
    res = runner.invoke(app, ["validate", "digits-var", "--size", "toy", "--data-dir", str(tmp_path / "missing")])
    assert res.exit_code == 1
    assert "does not exist" in res.output
