"""Patient pages: valid, self-contained HTML with the prediction record, every QC flag in
words when its condition is built into a file, and the fallbacks."""

import base64
import json
from html.parser import HTMLParser

import numpy as np
import pytest

from flowrbc.checkpoint import load_checkpoint, save_checkpoint
from flowrbc.io.fcs import read_fcs_data, write_fcs_arrays
from flowrbc.predict import load_model, predict_file
from flowrbc.report.files import report_files
from flowrbc.report.page import BANNER
from flowrbc.report.qc_text import TEXT

VOID = {"meta", "img", "br", "hr", "input", "link"}
SVG_LEAVES = {"rect", "line", "circle"}  # written self-closing: <rect ... />


class Page(HTMLParser):
    """Collects images, links and text, and checks that every element is closed in order."""

    def __init__(self, text: str):
        super().__init__()
        self.stack, self.images, self.urls, self.scripts, self.chunks, self.problems = [], [], [], {}, [], []
        self._script = None
        self.feed(text)
        self.close()
        self.text = " ".join(" ".join(self.chunks).split())

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src", ""))
        self.urls += [v for k, v in attrs if k in ("src", "href") and v]
        if tag == "script":
            self._script = a.get("id")
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.problems.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        self._script = None

    def handle_data(self, data):
        if self._script:
            self.scripts[self._script] = self.scripts.get(self._script, "") + data
        else:
            self.chunks.append(data)


def _cells(rng, n, volume=(90, 9), chc=(33.5, 2.0)):
    """n cells: volume (fL) and concentration (g/dL) normal, content = volume · concentration / 100."""
    v = rng.normal(*volume, n)
    return np.column_stack([v, v * rng.normal(*chc, n) / 100]).astype(np.float32)


def _write(path, cells, names=("RBC Volume", "RBC Hb"), sex="F"):
    write_fcs_arrays(path, cells, list(names), keywords={"FLOWRBC_SEX": sex, "FLOWRBC_AGE": "50"} if sex else None)
    return path


def _page(path) -> Page:
    return Page(path.with_suffix(".html").read_text())


def test_page_is_valid_self_contained_html_with_the_prediction(tiny_run, tmp_path):
    model_path, fcs = tiny_run
    model = load_model(model_path)
    src = sorted(fcs.glob("*.fcs"))[0]
    result = report_files(model, [src], tmp_path, seed=4)
    assert result.failed == [] and result.pages == [tmp_path / f"{src.stem}.html"]
    page = _page(tmp_path / src.name)
    assert page.problems == [] and page.stack == []
    assert BANNER in page.text
    assert len(page.images) == 1 and page.images[0].startswith("data:image/png;base64,")
    png = base64.b64decode(page.images[0].split(",", 1)[1])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png == (tmp_path / f"{src.stem}.png").read_bytes()
    assert not [u for u in page.urls if not u.startswith("data:")]  # nothing to fetch
    expected = predict_file(model, src, seed=4).to_dict()
    assert json.loads(page.scripts["flowrbc-prediction"]) == json.loads(json.dumps(expected))
    assert f"{expected['hematocrit']:.1f} %" in page.text
    assert f"{expected['hematocrit_low']:.1f}–{expected['hematocrit_high']:.1f} %" in page.text
    assert f"probability {expected['anemia_probability']:.2f}" in page.text
    assert "No QC flag" in page.text and "Mentzer" not in page.text
    assert "training patients whose recorded condition is healthy" in page.text  # the healthy contour's origin
    assert "ADVIA" in page.text and "WHO" in page.text  # where the bounds and the anemia rule come from


CASES = {
    "too_few_cells": lambda rng: _cells(rng, 60),
    "many_gated_out": lambda rng: np.concatenate([_cells(rng, 400), np.full((200, 2), 4.0, np.float32)]),
    "nonfinite_events": lambda rng: np.concatenate([_cells(rng, 400), np.full((3, 2), np.nan, np.float32)]),
    "outside_training_range": lambda rng: _cells(rng, 400, volume=(150, 5), chc=(40, 1)),
    "far_from_training": lambda rng: _cells(rng, 400, volume=(150, 5), chc=(40, 1)),
}


@pytest.fixture(scope="module")
def clean_page(tiny_run, tmp_path_factory) -> Page:
    """The page of a file that raises no QC flag."""
    root = tmp_path_factory.mktemp("clean")
    model = load_model(tiny_run[0])
    clean = _write(root / "clean.fcs", _cells(np.random.default_rng(2), 400))
    assert predict_file(model, clean).qc_flags == []
    report_files(model, [clean], root)
    return _page(root / "clean.fcs")


@pytest.mark.parametrize("flag", sorted(CASES))
def test_each_qc_flag_in_words_when_its_condition_is_built(tiny_run, clean_page, tmp_path, flag):
    model = load_model(tiny_run[0])
    path = _write(tmp_path / f"{flag}.fcs", CASES[flag](np.random.default_rng(1)))
    report_files(model, [path], tmp_path)
    assert flag in predict_file(model, path).qc_flags
    title, _ = TEXT[flag]
    assert title in _page(path).text
    assert title not in clean_page.text and "No QC flag" in clean_page.text


def test_unknown_sex_and_unfinished_model_are_said(tiny_run, tmp_path):
    model = load_model(tiny_run[0])
    path = _write(tmp_path / "anon.fcs", _cells(np.random.default_rng(3), 400), sex=None)
    model.complete = False  # what a checkpoint written during training loads as
    report_files(model, [path], tmp_path)
    text = _page(tmp_path / "anon.fcs").text
    assert "Sex or age unknown" in text and "Model not calibrated" in text
    assert "men: " in text and "women: " in text  # both reference ranges drawn


def test_missing_channel_gives_a_page_that_says_so(tiny_run, tmp_path):
    model = load_model(tiny_run[0])
    src = read_fcs_data(sorted(tiny_run[1].glob("*.fcs"))[0])
    path = tmp_path / "scatter.fcs"
    write_fcs_arrays(path, src.events, ["FSC-A", "SSC-A"])
    result = report_files(model, [path], tmp_path / "out")
    assert [p for p, _ in result.failed] == [path]
    page = _page(tmp_path / "out" / "scatter.fcs")
    assert page.problems == [] and BANNER in page.text
    assert "could not be analysed" in page.text and "lacks the model's channels" in page.text
    assert "--channel volume=NAME" in page.text
    mapped = report_files(model, [path], tmp_path / "mapped", overrides={"volume": "FSC-A", "hemoglobin": "SSC-A"})
    assert mapped.failed == [] and "could not be analysed" not in _page(tmp_path / "mapped" / "scatter.fcs").text


def test_mentzer_index_with_a_given_rbc_count(tiny_run, tmp_path):
    model = load_model(tiny_run[0])
    path = _write(tmp_path / "thal.fcs", _cells(np.random.default_rng(4), 500, volume=(66, 5), chc=(30, 2)))
    report_files(model, [path], tmp_path, rbc_count=6.0)
    text = _page(tmp_path / "thal.fcs").text
    assert "Mentzer index" in text and "favours β-thalassemia trait" in text and "Lancet 1973" in text


def test_checkpoint_without_healthy_reference_states_the_fallback(tiny_run, tmp_path):
    payload = load_checkpoint(tiny_run[0])
    del payload["healthy_reference"]
    older = save_checkpoint(tmp_path / "older.pt", payload)
    model = load_model(older)
    src = sorted(tiny_run[1].glob("*.fcs"))[0]
    report_files(model, [src], tmp_path / "out", seed=4)
    page = _page(tmp_path / "out" / src.name)
    assert "No healthy reference is drawn" in page.text and "training cohort, healthy" not in page.text
    assert len(page.images) == 1 and page.problems == []


def test_a_report_reads_each_file_once_and_draws_the_predictions_cells(tiny_run, tmp_path, monkeypatch):
    """``report_files`` reads a file once (for the prediction) and its page shows the
    prediction's own cells; pages for predictions already made read no file at all."""
    import flowrbc.io.sample as sample
    import flowrbc.predict as predict
    import flowrbc.report.files as files
    from flowrbc.report.files import write_patient_pages

    model = load_model(tiny_run[0])
    read, predict_file_, write_case = sample.read_fcs_data, predict.predict_file, files.write_case
    reads, preds, cases = [], [], []

    def counted_read(path, **kw):
        reads.append(path)
        return read(path, **kw)

    def kept_prediction(*args, **kw):
        preds.append(predict_file_(*args, **kw))
        return preds[-1]

    def kept_case(case, *args):
        cases.append(case)
        return write_case(case, *args)

    monkeypatch.setattr(sample, "read_fcs_data", counted_read)
    monkeypatch.setattr(predict, "predict_file", kept_prediction)
    monkeypatch.setattr(files, "write_case", kept_case)
    src = sorted(tiny_run[1].glob("*.fcs"))[0]
    report_files(model, [src], tmp_path / "pages", seed=4)
    assert reads == [src] and len(preds) == len(cases) == 1 and cases[0].cells is preds[0].cells

    path = _write(tmp_path / "gone.fcs", _cells(np.random.default_rng(6), 400))
    pred = predict_file_(model, path, seed=4)
    path.unlink()  # the page needs nothing more from the file
    reads.clear()
    write_patient_pages(model, [pred], tmp_path / "later")
    assert reads == [] and cases[-1].cells is pred.cells and cases[-1].name == "gone"
    assert _page(tmp_path / "later" / "gone.fcs").problems == []
