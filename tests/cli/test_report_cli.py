"""flowrbc report and predict --report through the typer app."""

import json
import re
from html.parser import HTMLParser

import pytest
from typer.testing import CliRunner

from flowrbc.cli import app
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.io.cohort import write_cohort
from flowrbc.synthetic.simulate import write_simulated

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_cli")
    write_cohort(synthetic_cohort(n_patients=80, n_cells=64, seed=6), root / "cohort.h5ad")
    out = runner.invoke(app, ["train", str(root / "cohort.h5ad"), "--epochs", "1", "--width", "16", "--depth", "1",
                              "--set-size", "32", "--batch-size", "16", "--device", "cpu", "--out", str(root / "run")])
    assert out.exit_code == 0, out.output
    write_simulated(root / "fcs", n_patients=2, n_cells=300, seed=3)
    return root, str(root / "run" / "model.pt")


def _record(html: str) -> dict:
    found = re.search(r'<script type="application/json" id="flowrbc-prediction">(.*?)</script>', html, re.S)
    return json.loads(found.group(1))


def test_report_pages_carry_the_numbers_predict_json_gives(trained):
    root, model = trained
    files = sorted(str(p) for p in (root / "fcs").glob("*.fcs"))
    out = runner.invoke(app, ["report", *files, "--model", model, "-o", str(root / "pages"), "--seed", "7"])
    assert out.exit_code == 0, out.output
    rows = json.loads(runner.invoke(app, ["predict", *files, "--model", model, "--format", "json",
                                          "--seed", "7"]).stdout)
    for row in rows:
        stem = row["file"].rsplit("/", 1)[-1].removesuffix(".fcs")
        html = (root / "pages" / f"{stem}.html").read_text()
        assert _record(html) == row
        assert f"{row['hematocrit']:.1f} %" in html and f"probability {row['anemia_probability']:.2f}" in html
        assert (root / "pages" / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"


def test_predict_report_writes_the_same_pages(trained):
    root, model = trained
    fcs = str(sorted((root / "fcs").glob("*.fcs"))[0])
    out = runner.invoke(app, ["predict", fcs, "--model", model, "--format", "json", "--seed", "7",
                              "--report", str(root / "via_predict")])
    assert out.exit_code == 0, out.output
    row = json.loads(out.stdout)[0]  # stdout stays the JSON alone
    assert "wrote 1 report page(s)" in out.stderr
    assert _record((root / "via_predict" / (fcs.rsplit("/", 1)[-1][:-4] + ".html")).read_text()) == row


def test_report_of_an_instrument_unit_file_is_scaled_as_predict_scales_it(trained):
    from tests.instrument_units import FACTORS, to_instrument_units

    root, model = trained
    cyto = to_instrument_units(sorted((root / "fcs").glob("*.fcs"))[0], root / "cyto.fcs")
    args = ["--model", model, "--seed", "7", "--channel", "volume=FSC-A", "--channel", "hemoglobin=SSC-A",
            *(a for role, f in FACTORS.items() for a in ("--scale", f"{role}={f}"))]
    refused = runner.invoke(app, ["report", str(cyto), "--model", model, "-o", str(root / "cyto_refused"),
                                  "--channel", "volume=FSC-A", "--channel", "hemoglobin=SSC-A"])
    assert refused.exit_code == 1 and "--scale" in refused.output
    out = runner.invoke(app, ["report", str(cyto), "-o", str(root / "cyto_pages"), *args])
    assert out.exit_code == 0, out.output
    row = json.loads(runner.invoke(app, ["predict", str(cyto), "--format", "json", *args]).stdout)[0]
    record = _record((root / "cyto_pages" / "cyto.html").read_text())
    assert record == row and record["scale_volume"] == FACTORS["volume"]


@pytest.mark.filterwarnings("ignore:.*off by one")  # data set 0's $ENDDATA, as the FC500 writes it
def test_predict_reads_the_data_set_asked_for(trained, tmp_path):
    from tests.io.fcs_builders import fc500_like

    root, model = trained
    fcs = sorted((root / "fcs").glob("*.fcs"))[0]
    two = tmp_path / "two.lmd"
    two.write_bytes(fc500_like(n=50, second=fcs.read_bytes())[0])  # data set 0: scatter, no RBC channels
    args = ["--model", model, "--format", "json", "--seed", "7"]
    want = json.loads(runner.invoke(app, ["predict", str(fcs), *args]).stdout)[0]
    out = runner.invoke(app, ["predict", str(two), "--dataset", "1", *args])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)[0] == {**want, "file": str(two)}
    refused = runner.invoke(app, ["predict", str(two), *args])
    assert refused.exit_code == 1 and "two.lmd: lacks the model's channels" in refused.stderr


def test_predict_names_every_channel_out_of_range_once_and_its_factors_predict(trained, tmp_path):
    """FSC-A 11x and SSC-A 31x the model's fL and pg: one refusal names both with their
    factors, and one command giving them predicts."""
    from tests.instrument_units import to_instrument_units

    root, model = trained
    cyto = to_instrument_units(sorted((root / "fcs").glob("*.fcs"))[0], tmp_path / "cyto.fcs",
                               {"volume": 1 / 11, "hemoglobin": 1 / 31})
    args = ["predict", str(cyto), "--model", model, "--format", "json", "--channel", "volume=FSC-A",
            "--channel", "hemoglobin=SSC-A"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 1 and refused.stderr.count("error:") == 1
    message = refused.stderr.strip()
    assert "\n" not in message and message.startswith(f"error: {cyto}: channel 'FSC-A' (volume) has median")
    assert "channel 'SSC-A' (hemoglobin) has median" in message
    factors = re.findall(r"--scale (\w+)=FACTOR \(about ([\d.e-]+)", message)
    assert [role for role, _ in factors] == ["volume", "hemoglobin"]
    out = runner.invoke(app, args + [a for role, f in factors for a in ("--scale", f"{role}={f}")])
    assert out.exit_code == 0, out.output
    row = json.loads(out.stdout)[0]
    assert row["scale_volume"] == float(factors[0][1]) and row["cells_used"] > 250


def test_bad_inputs_are_one_line_errors(trained, tmp_path):
    root, model = trained
    fcs = str(sorted((root / "fcs").glob("*.fcs"))[0])
    cases = [
        (["report", fcs, "--model", str(tmp_path / "none.pt")], "none.pt: no such checkpoint"),
        (["report", fcs, "--model", model, "--rbc-count", "-1"], "--rbc-count -1: not an RBC count"),
        (["report", str(root / "cohort.h5ad"), fcs, "--model", model], "a cohort report takes one .h5ad"),
        (["report", str(tmp_path / "gone.fcs"), "--model", model, "-o", str(tmp_path / "o")], "gone.fcs"),
        (["report", str(root / "cohort.h5ad"), "--model", model, "--split", "nope"], "--split 'nope'"),
    ]
    for args, message in cases:
        out = runner.invoke(app, args)
        assert out.exit_code == 1, (args, out.output)
        assert message in out.stderr and "Traceback" not in out.output
        assert out.stderr.count("error:") == 1


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.images = [], 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.hrefs += [a["href"]] if tag == "a" and "href" in a else []
        self.images += tag == "img" and a.get("src", "").startswith("data:image/png;base64,")


def test_cohort_overview_links_its_patient_pages(trained):
    root, model = trained
    out = runner.invoke(app, ["report", str(root / "cohort.h5ad"), "--model", model, "-o", str(root / "cohort"),
                              "--split", "all", "--pages", "3"])
    assert out.exit_code == 0, out.output
    index = (root / "cohort" / "index.html").read_text()
    links = _Links()
    links.feed(index)
    assert links.images == 1 and len(links.hrefs) == 3
    for href in links.hrefs:
        page = (root / "cohort" / href).read_text()
        assert '<a href="../index.html">' in page and "recorded hematocrit" in page
    for words in ("Research use only", "Hematocrit predicted vs true", "Error by condition and sex", "healthy · F",
                  "80 samples"):
        assert words in index
