"""The precision rule by capability (``flowrbc.precision``): the CPU's bf16 matrix units read
from /proc/cpuinfo texts, the rule for auto/bf16/fp32, the measurement cache, and the
precision a checkpoint records and predicts in. Nothing here times anything."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import flowrbc.precision as precision
from flowrbc.checkpoint import load_checkpoint, save_checkpoint
from flowrbc.cli import app
from flowrbc.errors import FlowrbcError
from flowrbc.io.builtin import synthetic_cohort
from flowrbc.predictor import Predictor
from flowrbc.train import TrainConfig, train_cohort

INTEL_SPR = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8
vmx flags\t: vnmi preemption_timer

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu vme sse sse2
"""
AMD_ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9654 96-Core Processor
flags\t\t: fpu vme sse sse2 avx avx2 fma avx512f avx512bw avx512vl avx512_bf16 avx512_vnni
"""
AMD_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu vme sse sse2 avx avx2 fma sha_ni vaes
"""
ARM_NEOVERSE_V1 = """processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics sve asimdfhm svei8mm svebf16 i8mm bf16 dgh rng
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x1
CPU part\t: 0xd40
CPU revision\t: 1
"""
ARM_NEOVERSE_N1 = ARM_NEOVERSE_V1.replace(" svebf16 i8mm bf16", "").replace("0xd40", "0xd0c")


def test_cpuinfo_gives_the_model_and_its_bf16_matrix_units():
    assert precision.parse_cpuinfo(INTEL_SPR) == {"model": "Intel(R) Xeon(R) Platinum 8480+",
                                                  "bf16_units": ["amx_bf16", "avx512_bf16"]}
    assert precision.parse_cpuinfo(AMD_ZEN4) == {"model": "AMD EPYC 9654 96-Core Processor",
                                                 "bf16_units": ["avx512_bf16"]}
    assert precision.parse_cpuinfo(AMD_ZEN3) == {"model": "AMD EPYC 7763 64-Core Processor", "bf16_units": []}
    assert precision.parse_cpuinfo(ARM_NEOVERSE_V1) == {"model": "Arm Neoverse V1", "bf16_units": ["bf16"]}
    assert precision.parse_cpuinfo(ARM_NEOVERSE_N1) == {"model": "Arm Neoverse N1", "bf16_units": []}  # not svebf16
    assert precision.parse_cpuinfo("") == {"model": None, "bf16_units": None}  # nothing conclusive


def test_this_machines_capability_has_every_field():
    cap = precision.cpu_capability()
    assert {"model", "arch", "bf16_units", "torch_mkldnn", "torch_mkldnn_bf16"} <= set(cap)
    assert cap["model"] and (cap["bf16_units"] is None or set(cap["bf16_units"]) <= {"amx_bf16", "avx512_bf16",
                                                                                      "bf16", "sme"})


def _cpu(monkeypatch, text):
    monkeypatch.setattr(precision, "cpu_capability", lambda: precision.parse_cpuinfo(text))
    monkeypatch.setattr(precision, "measure_bf16", _no_timing)


def _no_timing(threads, repeats=3):
    raise AssertionError("a test timed the CPU")


@pytest.mark.parametrize("text", [INTEL_SPR, AMD_ZEN4, ARM_NEOVERSE_V1])
def test_auto_is_bf16_on_bf16_units_of_any_vendor_for_wide_enough_models(monkeypatch, text):
    _cpu(monkeypatch, text)
    resolve = precision.resolve_precision
    assert resolve("auto", "cpu", precision.CPU_BF16_MIN_WIDTH, train=True) == "bf16"
    assert resolve("auto", "cpu", precision.CPU_BF16_MIN_WIDTH - 1, train=True) == "fp32"
    assert resolve("auto", "cpu", precision.CPU_BF16_MIN_WIDTH_INFER, train=False) == "bf16"
    assert resolve("auto", "cpu", precision.CPU_BF16_MIN_WIDTH_INFER - 1, train=False) == "fp32"
    assert resolve("auto", "cpu", None, train=False) == "fp32"
    assert resolve("fp32", "cpu", 512, train=True) == "fp32"


def test_auto_is_fp32_without_units_and_an_asked_precision_is_obeyed(monkeypatch):
    _cpu(monkeypatch, AMD_ZEN3)
    resolve = precision.resolve_precision
    for train in (True, False):
        assert resolve("auto", "cpu", 512, train) == "fp32"
        assert resolve("bf16", "cpu", 16, train) == "bf16"  # slow there, but asked
        assert resolve("fp32", "cuda", 512, train) == "fp32"
        assert resolve("auto", "cuda", 16, train) == "bf16"
    assert precision.describe_precision("auto", "cpu", 128, True) == \
        "precision fp32 (no bf16 matrix units on AMD EPYC 7763 64-Core Processor)"
    assert precision.describe_precision("fp32", "cpu", 128, True) == "precision fp32 (asked)"
    with pytest.raises(FlowrbcError, match="precision 'fp16'"):
        resolve("fp16", "cpu", 128, True)
    _cpu(monkeypatch, AMD_ZEN4)
    assert precision.describe_precision("auto", "cpu", 128, True) == "precision bf16 (avx512_bf16)"
    assert precision.describe_precision("auto", "cpu", 64, True) == "precision fp32 (width 64 < 128 for bf16 training)"


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.delenv("FLOWRBC_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    precision.bf16_measurement.cache_clear()
    yield tmp_path / "flowrbc" / "precision.json"
    precision.bf16_measurement.cache_clear()


def test_the_measurement_cache_round_trips_per_thread_count(cache, tmp_path, monkeypatch):
    measured = {"fp32_gflops": 49.0, "bf16_gflops": 235.0, "ratio": 235.0 / 49.0}
    assert precision.cache_path() == cache and precision.load_measurement(2) is None
    precision.store_measurement(2, measured)
    assert precision.load_measurement(2) == measured and precision.load_measurement(3) is None
    precision.store_measurement(3, dict(measured, ratio=1.0))
    assert precision.load_measurement(2) == measured and precision.load_measurement(3)["ratio"] == 1.0
    assert len(json.loads(cache.read_text())) == 2
    assert [p.name for p in cache.parent.iterdir()] == ["precision.json"]  # written atomically: no leftovers

    cache.write_text("{not json")
    assert precision.load_measurement(2) is None
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))  # under a file: cannot be written
    precision.store_measurement(2, measured)  # no error
    assert precision.load_measurement(2) is None


def test_the_cached_measurement_decides_where_the_flags_say_nothing(cache, monkeypatch):
    _cpu(monkeypatch, "")
    threads = torch.get_num_threads()
    assert precision.resolve_precision("auto", "cpu", 256, True) == "fp32"  # FLOWRBC_NO_MEASURE: nothing read
    assert "not measured" in precision.describe_precision("auto", "cpu", 256, True)
    monkeypatch.delenv("FLOWRBC_NO_MEASURE")
    for ratio, expected in ((2.0, "bf16"), (1.1, "fp32")):
        precision.store_measurement(threads, {"fp32_gflops": 10.0, "bf16_gflops": 10.0 * ratio, "ratio": ratio})
        precision.bf16_measurement.cache_clear()
        assert precision.resolve_precision("auto", "cpu", 256, True) == expected  # _no_timing: read, not timed
        assert precision.resolve_precision("auto", "cpu", 16, True) == "fp32"  # too narrow either way


def test_a_checkpoint_predicts_in_the_precision_it_was_validated_in(tmp_path):
    cohort = synthetic_cohort(n_patients=80, n_cells=64, seed=3)
    config = TrainConfig(width=16, depth=1, set_size=64, epochs=1, batch_size=16, device="cpu", hybrid=False,
                         index_inputs=False, precision="fp32")
    said = []
    result = train_cohort(cohort, config, tmp_path / "run", plots=False, log=said.append)
    assert "precision fp32 (asked)" in said[0]
    assert result.metrics["precision"] == {"train": "fp32", "predict": "fp32"}
    path = result.run_dir / "model.pt"
    payload = load_checkpoint(path)
    assert payload["precision"] == "fp32" and payload["train_config"]["precision"] == "fp32"
    assert Predictor.load(path).precision == "fp32"
    low = Predictor.load(path, precision="bf16")
    assert low.precision == "bf16"

    fp32, _ = Predictor.load(path).predict(low.prepare_cohort(cohort, np.arange(8)))
    bf16, _ = low.predict(low.prepare_cohort(cohort, np.arange(8)))
    assert not np.array_equal(fp32.set_model["hematocrit"], bf16.set_model["hematocrit"])
    np.testing.assert_allclose(bf16.set_model["hematocrit"], fp32.set_model["hematocrit"], atol=0.1)

    payload.pop("precision")  # as written before flowrbc recorded it
    save_checkpoint(tmp_path / "old.pt", payload)
    assert Predictor.load(tmp_path / "old.pt").precision == "auto"


@pytest.mark.parametrize("command", ["train", "predict"])
def test_precision_is_an_option_of_train_and_predict(command):
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0 and "--precision" in out.output


def test_deep_set_norm_models_train_lean_by_default_in_fp32_on_cpu():
    from flowrbc.models import ModelConfig
    from flowrbc.train import lean_by_default

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    deep = ModelConfig(family="deepsets++", depth=25)
    assert lean_by_default(deep, cpu, "fp32")
    assert not lean_by_default(deep, cpu, "bf16")
    assert not lean_by_default(deep, cuda, "fp32")
    assert lean_by_default(ModelConfig(family="set_transformer++", depth=8), cpu, "fp32")
    assert not lean_by_default(ModelConfig(family="deepsets++"), cpu, "fp32")  # the default 3 blocks
    assert not lean_by_default(ModelConfig(family="deepsets", depth=25), cpu, "fp32")  # no set norm
