"""The precision rule by capability: where a set model runs under bf16 autocast, and where in
float32.

``resolve_precision(requested, device, width, train)`` -> ``"bf16"`` or ``"fp32"``. An asked
``"bf16"`` or ``"fp32"`` is obeyed (bf16 on a CPU without bf16 matrix units is correct, only
slow). ``"auto"``: bf16 on CUDA; on a CPU bf16 when it multiplies bf16 matrices in hardware,
of any vendor (``cpu_capability``: x86 ``amx_bf16`` or ``avx512_bf16``, Arm ``bf16`` or
``sme``), for a model at least ``CPU_BF16_MIN_WIDTH`` wide (training) or
``CPU_BF16_MIN_WIDTH_INFER`` (forward passes only); float32 elsewhere. Where the CPU's
features cannot be read (macOS, another system), a one-time measurement decides
(``bf16_measurement``: bf16 where it multiplied at least ``MEASURED_BF16_GAIN`` times as fast as
float32), cached per machine in ``$XDG_CACHE_HOME/flowrbc/precision.json``; with
``FLOWRBC_NO_MEASURE`` set nothing is timed or read there, and such a CPU stays in float32.

torch and the standard library only: the predict path loads this module.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

from flowrbc.errors import FlowrbcError

PRECISIONS = ("auto", "bf16", "fp32")
CPU_BF16_MIN_WIDTH = 128  # training: narrower models gain nothing from bf16 on a CPU step (measured below)
CPU_BF16_MIN_WIDTH_INFER = 64  # inference (no backward): bf16 pays from this width (measured below)
# Measured on a CPU with AMX tiles, training steps (one thread, B 64, N 1,000): Deep Sets++ 25
# blocks at width 128 1.4x faster in bf16, Set Transformer++ 8 blocks 1.4x (with the explicit
# attention of ``MultiHead``); the default Deep Sets++ 3 blocks at width 64 (B 16, N 250) a tie
# (448 vs 459 sets/s). Inference of that default model (batches of 256 sets of 250 cells): 1.4x
# on one thread, 1.9x on two; on 3,000 fresh patients x 10 draws its hematocrit MSE moved by
# -0.0015 +- 0.0012 (largest change 0.05 %-points).
X86_BF16 = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo ``flags``: AMX tiles (Intel Xeon from Sapphire
# Rapids on: one core multiplied (64,000 x 128) @ (128 x 128) in bf16 at 235 GFLOP/s against 49 in
# float32), bf16 dot products in AVX-512 (Intel Cooper Lake, AMD Zen 4 on)
ARM_BF16 = ("bf16", "sme")  # /proc/cpuinfo ``Features``: BFMMLA/BFDOT (Neoverse V1, N2 on), SME tiles
ARM_PARTS = {("0x41", "0xd0c"): "Arm Neoverse N1", ("0x41", "0xd40"): "Arm Neoverse V1",
             ("0x41", "0xd49"): "Arm Neoverse N2", ("0x41", "0xd4f"): "Arm Neoverse V2"}  # (implementer, part)
MEASURE_SHAPE = (64_000, 128)  # (rows, D): the models' linear layers, (rows, D) @ (D, D)
MEASURED_BF16_GAIN = 1.3  # bf16 / float32 matmul rate from which an unknown CPU runs "auto" in bf16


def parse_cpuinfo(text: str) -> dict:
    """The CPU model and its bf16 matrix features from the text of ``/proc/cpuinfo`` (the first
    processor's lines) -> {"model": its name or None, "bf16_units": those of ``X86_BF16`` (a
    ``flags`` line) or ``ARM_BF16`` (a ``Features`` line) it lists; None without either line:
    nothing conclusive}."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    units = None
    if "flags" in fields:
        units = [f for f in X86_BF16 if f in fields["flags"].split()]
    elif "Features" in fields:
        units = [f for f in ARM_BF16 if f in fields["Features"].split()]
    model = fields.get("model name")
    if model is None and "CPU part" in fields:
        where = (fields.get("CPU implementer", "?"), fields["CPU part"])
        model = ARM_PARTS.get(where, f"Arm implementer {where[0]} part {where[1]}")
    return {"model": model, "bf16_units": units}


@functools.cache
def cpu_capability() -> dict:
    """This machine's CPU -> {"model", "arch", "bf16_units" (``parse_cpuinfo``; None where the
    system does not say: macOS, others), "torch_mkldnn", "torch_mkldnn_bf16" (torch's own view,
    None where it cannot say)}. torch's view is reported, not used: oneDNN runs bf16 on any
    AVX-512 CPU by conversion, which is no matrix unit."""
    try:
        with open("/proc/cpuinfo") as f:
            info = parse_cpuinfo(f.read())
    except OSError:
        info = {"model": None, "bf16_units": None}
    return {"model": info["model"] or _platform_model(), "arch": platform.machine(), "bf16_units": info["bf16_units"],
            "torch_mkldnn": _torch_says(lambda: torch.backends.mkldnn.is_available()),
            "torch_mkldnn_bf16": _torch_says(lambda: torch.ops.mkldnn._is_mkldnn_bf16_supported())}


def _platform_model() -> str:
    """The CPU's name where there is no /proc/cpuinfo (macOS: its brand string)."""
    if sys.platform == "darwin":
        import subprocess

        try:
            out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True,
                                 timeout=5)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):
            pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _torch_says(ask) -> bool | None:
    try:
        return bool(ask())
    except Exception:  # an older or slimmer build without the call
        return None


# ----------------------------------------------------------------------------- measurement


def measure_bf16(threads: int, repeats: int = 3) -> dict[str, float]:
    """Time (64,000 x 128) @ (128 x 128) on ``threads`` CPU threads in float32 and under bf16
    autocast (the inputs cast as the models' are), best of ``repeats`` after a warm-up each
    -> {"fp32_gflops", "bf16_gflops", "ratio": bf16 / float32}."""
    rows, dim = MEASURE_SHAPE
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        g = torch.Generator().manual_seed(0)
        a, w = torch.randn(rows, dim, generator=g), torch.randn(dim, dim, generator=g)
        rates = {}
        for name in ("fp32", "bf16"):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=name == "bf16"):
                a @ w
                best = math.inf
                for _ in range(repeats):
                    t = time.perf_counter()
                    a @ w
                    best = min(best, time.perf_counter() - t)
            rates[name] = 2.0 * rows * dim * dim / best / 1e9
    finally:
        torch.set_num_threads(previous)
    return {"fp32_gflops": rates["fp32"], "bf16_gflops": rates["bf16"], "ratio": rates["bf16"] / rates["fp32"]}


def cache_path() -> Path:
    """``$FLOWRBC_CACHE/precision.json``, else ``$XDG_CACHE_HOME/flowrbc/precision.json``, else
    under ``~/.cache/flowrbc``."""
    root = os.environ.get("FLOWRBC_CACHE")
    if root:
        return Path(root) / "precision.json"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flowrbc" / "precision.json"


def _cache_key(threads: int) -> str:
    return f"{cpu_capability()['model']} | torch {torch.__version__} | {threads} threads"


def _read_cache() -> dict:
    try:
        entries = json.loads(cache_path().read_text())
    except (OSError, RuntimeError, ValueError):  # RuntimeError: no home directory
        return {}
    return entries if isinstance(entries, dict) else {}


def load_measurement(threads: int) -> dict | None:
    """This CPU's cached ``measure_bf16`` at ``threads`` threads (this torch); None: none."""
    found = _read_cache().get(_cache_key(threads))
    return found if isinstance(found, dict) and isinstance(found.get("ratio"), (int, float)) else None


def store_measurement(threads: int, measured: dict[str, float]) -> None:
    """Add ``measured`` to the cache (a temporary file renamed over it); a cache that cannot be
    written stays as it is, without an error."""
    from flowrbc.checkpoint import atomic_write_text

    entries = dict(_read_cache(), **{_cache_key(threads): measured})
    try:
        atomic_write_text(cache_path(), json.dumps(entries, indent=1, sort_keys=True) + "\n")
    except (OSError, RuntimeError):
        pass


@functools.cache
def bf16_measurement(threads: int) -> dict | None:
    """This CPU's ``measure_bf16`` at ``threads`` threads: cached, else measured once and
    cached; None with ``FLOWRBC_NO_MEASURE`` set."""
    if os.environ.get("FLOWRBC_NO_MEASURE"):
        return None
    found = load_measurement(threads)
    if found is None:
        found = measure_bf16(threads)
        store_measurement(threads, found)
    return found


# ----------------------------------------------------------------------------- the rule


def _decide(requested: str, device: torch.device | str, width: int | None, train: bool) -> tuple[str, str]:
    """(precision, why) of ``resolve_precision``."""
    if requested not in PRECISIONS:
        raise FlowrbcError(f"precision {requested!r}: use {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, "asked"
    kind = torch.device(device).type
    if kind == "cuda":
        return "bf16", "CUDA"
    if kind != "cpu":
        return "fp32", f"{kind}: bf16 where asked only"
    cpu = cpu_capability()
    units = cpu["bf16_units"]
    if units == []:
        return "fp32", f"no bf16 matrix units on {cpu['model']}"
    least = CPU_BF16_MIN_WIDTH if train else CPU_BF16_MIN_WIDTH_INFER
    if width is None or width < least:
        return "fp32", f"width {width} < {least} for bf16 {'training' if train else 'inference'}"
    if units:
        return "bf16", ", ".join(units)
    measured = bf16_measurement(torch.get_num_threads())
    if measured is None:
        return "fp32", f"bf16 matrix units of {cpu['model']} unknown, not measured"
    gain = measured["ratio"]
    return "bf16" if gain >= MEASURED_BF16_GAIN else "fp32", f"bf16 measured {gain:.2f}x float32 on {cpu['model']}"


def resolve_precision(requested: str, device: torch.device | str, width: int | None, train: bool) -> str:
    """``"bf16"`` or ``"fp32"`` for ``requested`` (``"auto"``, ``"bf16"`` or ``"fp32"``; see the
    module docstring) on ``device``, for a model of hidden size ``width`` (None: not a set
    model, float32 on a CPU), training (``train``) or forward passes only."""
    return _decide(requested, device, width, train)[0]


def describe_precision(requested: str, device: torch.device | str, width: int | None, train: bool) -> str:
    """One line on ``resolve_precision``'s choice, e.g. "precision bf16 (avx512_bf16)",
    "precision fp32 (no bf16 matrix units on AMD EPYC 7763)", "precision fp32 (asked)"."""
    chosen, why = _decide(requested, device, width, train)
    return f"precision {chosen} ({why})"
