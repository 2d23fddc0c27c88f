r"""Speed harness: flowrbc's set models against the papers'-style eager baseline, in one run.

    python3 benchmarks/speed.py                                   # the grid below, CPU, 2 threads
    python3 benchmarks/speed.py --models deepsets++-25 set_transformer++-8 --sizes 1000 --json out.json
    python3 benchmarks/speed.py --scaling --json scaling.json      # inference vs set size, to 10^6
    python3 benchmarks/speed.py --toy --json toy.json              # seconds: what CI runs
    python3 benchmarks/speed.py --device cuda                      # on a GPU (flowrbc: bf16 autocast, its own rule)
    python3 benchmarks/speed.py --precision fp32                   # flowrbc in float32 whatever the CPU

Grid mode: for every model and set size N, training sets/s (forward + backward + Adam, batches
drawn from a cohort-like cell matrix), inference sets/s and peak memory, for flowrbc and for
the baseline of ``papers_models.py`` (the same math written as the papers' code writes it,
fp32, fed by a per-item numpy Dataset and DataLoader). Scaling mode: inference time and peak
memory of one set against its size, the Slot Set Encoder both streamed in chunks
(``init_state`` / ``update`` / ``finalize``) and whole.

Every measurement runs in a fresh subprocess, so that its peak memory is its own: on CPU the
resident high-water mark over the timed steps (``VmHWM``, restarted just before the first
step through ``/proc/self/clear_refs``) minus the resident set at that moment (model,
optimiser and data already built); on CUDA ``max_memory_allocated``. The parent
samples each child's resident set and stops it beyond ``--mem-limit`` (reported, not fatal).

Roofline: the matrix-product FLOPs of one set (``torch.utils.flop_counter``, counted on tiny
sets and extended exactly: they are a polynomial of degree <= 2 in N) divided by the matmul
rate measured in the same child just after its timed steps, under the model's own precision
(bf16 where ``flowrbc.precision`` turns it on; each record's ``precision``); ``efficiency`` =
measured / roofline. Figures are wall-clock: the load average is recorded before and after each
child. The output starts with the machine (``machine``: the CPU model, its bf16 matrix units,
torch's version, the thread count and the precision of flowrbc's rule at ``--width``), as does
the JSON's ``meta``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

# name -> (family, depth, extra ModelConfig fields). Set Transformers use ISAB with 32
# inducing points and 4 heads (the papers' hematocrit setting); the baseline does too.
MODELS = {
    "deepsets-3": ("deepsets", 3, {}),
    "deepsets++-3": ("deepsets++", 3, {}),  # flowrbc train's default
    "deepsets++-25": ("deepsets++", 25, {}),
    "deepsets++-50": ("deepsets++", 50, {}),
    "set_transformer-2": ("set_transformer", 2, {"inducing": 32, "heads": 4}),
    "set_transformer++-8": ("set_transformer++", 8, {"inducing": 32, "heads": 4}),
    "set_transformer++-16": ("set_transformer++", 16, {"inducing": 32, "heads": 4}),
    "slot_set": ("slot_set", 2, {}),
}
DEFAULT_SIZES = [100, 1000, 10_000]
DEFAULT_SCALING_SIZES = [10_000, 100_000, 1_000_000]
SCALING_MODELS = ("slot_set-stream", "slot_set", "deepsets++-25", "set_transformer++-8")
GIB = 2**30


# ----------------------------------------------------------------------------- child side


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_peak() -> int:
    """Restart the resident high-water mark (Linux: ``clear_refs`` 5), so that what the
    child did before (model building, FLOP counting) does not count; -> resident bytes now."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then the peak is the process's whole-life high-water mark
    return _rss_bytes()


def _map_large_blocks() -> None:
    """glibc: serve every block over 128 KiB by its own mapping, returned when freed, and
    give back what the heap holds, so that the resident set follows the live tensors. By
    default glibc keeps freed blocks of a few MB on its heap (the threshold rises as such
    blocks are freed) and tens of MB of resident set are then fragmentation, not tensors.
    Slower (a page fault per fresh page), so only the untimed peak run uses it."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 17)  # M_MMAP_THRESHOLD
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_bytes() -> int:
    """The resident high-water mark (``VmHWM``) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _sync(device) -> None:
    if device.type == "cuda":
        import torch

        torch.cuda.synchronize()


def _matmul_rate(device, rows: int, dim: int, precision) -> float:
    """FLOP/s of a (rows, D) x (D, D) product, the shape of the models' linear layers, under
    ``precision()`` (the autocast context the model ran in: bf16 where flowrbc uses it)."""
    import torch

    a = torch.randn(rows, dim, device=device)
    w = torch.randn(dim, dim, device=device)
    with precision():
        for _ in range(2):
            a @ w
        _sync(device)
        reps, t = 0, time.perf_counter()
        while reps < 3 or time.perf_counter() - t < 0.3:
            a @ w
            reps += 1
        _sync(device)
    return 2.0 * rows * dim * dim * reps / (time.perf_counter() - t)


def _build(spec: dict, n: int, device):
    """The model of ``spec`` for sets of ``n`` elements (the baseline's set norm fixes n)."""
    from papers_models import paper_model

    from flowrbc.models import ModelConfig, build_model

    family, depth, extra = MODELS[spec["model"]]
    if spec["impl"] == "papers":
        return paper_model(family, depth, n, spec["width"], **extra).to(device)
    config = ModelConfig(family=family, depth=depth, width=spec["width"], checkpoint=spec["checkpoint"], **extra)
    lean = spec.get("lean")
    if lean is None:  # as `flowrbc train` decides (flowrbc.train.lean_by_default)
        from flowrbc.train import lean_by_default

        lean = lean_by_default(config, device, _precision(spec, device, True))
    config.lean = lean
    return build_model(config).to(device)


def _head(out):
    return out["hematocrit"] if isinstance(out, dict) else out  # (B, 1)


def _flops_per_set(spec: dict, device, train: bool) -> float:
    """Matrix-product FLOPs of one set of N elements (forward, plus backward when ``train``)."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    sizes = (8, 16, 32)
    counts = []
    for n in sizes:
        torch.manual_seed(0)
        model = _build(spec, n, device).train(train)
        x = torch.randn(1, n, 2, device=device)
        with FlopCounterMode(display=False) as counter:  # its module tracker needs grad mode on
            out = _head(model(x)).sum()
            if train:
                out.backward()
        counts.append(counter.get_total_flops())
    coef = np.polyfit(np.array(sizes, float), np.array(counts, float), 2)  # exact: degree <= 2 in N
    return float(np.polyval(coef, spec["n"]))


def _cells(spec: dict, samples: int):
    """A cohort-like cell matrix: ``samples`` samples of N..1.2 N cells, 2 features."""
    import numpy as np

    rng = np.random.default_rng(0)
    counts = rng.integers(spec["n"], int(spec["n"] * 1.2) + 1, samples)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    cells = rng.normal(0.0, 1.0, (offsets[-1], 2)).astype(np.float32)
    return cells, offsets


def _batches(spec: dict, device):
    """An endless iterator of (B, N, 2) batches: flowrbc's on-device gather, or the baseline's loader."""
    import torch

    b, n = spec["batch"], spec["n"]
    cells, offsets = _cells(spec, 4 * b)
    if spec["impl"] == "papers":
        from papers_models import PerItemSets

        loader = torch.utils.data.DataLoader(PerItemSets(cells, offsets, n), batch_size=b, shuffle=True, drop_last=True)
        while True:
            for x in loader:
                yield x.to(device)
    from flowrbc.inputs import draw_sets

    X, offs = torch.from_numpy(cells).to(device), torch.from_numpy(offsets).to(device)
    g = torch.Generator(device=device)
    g.manual_seed(0)
    while True:
        idx = torch.randint(0, len(offsets) - 1, (b,), generator=g, device=device)
        yield draw_sets(X, offs, idx, n, g)


def _precision(spec: dict, device, train: bool) -> str:
    """flowrbc's precision rule (``flowrbc.precision``) on ``--precision`` (default "auto"); the
    baseline is float32."""
    if spec["impl"] == "flowrbc":
        from flowrbc.precision import resolve_precision

        return resolve_precision(spec.get("precision", "auto"), device, spec["width"], train)
    return "fp32"


def _autocast(spec: dict, device, train: bool):
    """The autocast context of ``_precision``."""
    from flowrbc.fit import autocast_for

    return autocast_for(device, _precision(spec, device, train), spec["width"], train)


def _timed_steps(step, steps: int, device) -> float:
    """Median seconds of ``steps`` calls of ``step`` after one warm-up call."""
    import statistics

    step()
    times = []
    for _ in range(steps):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def run_grid_child(spec: dict) -> dict:
    """One (impl, model, N, phase) measurement."""
    import torch

    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    train = spec["phase"] == "train"
    flops = _flops_per_set(spec, device, train)
    torch.manual_seed(0)
    model = _build(spec, spec["n"], device).train(train)
    batches = _batches(spec, device)
    y = torch.zeros(spec["batch"], 1, device=device)
    optim = torch.optim.Adam(model.parameters(), lr=1e-4) if train else None

    def train_step():
        x = next(batches)
        with _autocast(spec, device, True):
            loss = (_head(model(x)).float() - y).pow(2).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    def infer_step():
        x = next(batches)
        with torch.no_grad(), _autocast(spec, device, False):
            _head(model(x))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = _reset_peak()
    seconds = _timed_steps(train_step if train else infer_step, spec["steps"], device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_bytes() - before
    rate = _matmul_rate(device, min(spec["batch"] * spec["n"], 1 << 16), spec["width"],  # after the peak
                        lambda: _autocast(spec, device, train))
    roofline = rate / flops
    return {"sets_per_s": spec["batch"] / seconds, "step_s": seconds, "peak_gib": peak / GIB,
            "flops_per_set": flops, "matmul_flop_s": rate, "roofline_sets_per_s": roofline,
            "efficiency": spec["batch"] / seconds / roofline,
            "params": sum(p.numel() for p in model.parameters()), "precision": _precision(spec, device, train),
            "lean": bool(getattr(getattr(model, "config", None), "lean", False))}


def run_scaling_child(spec: dict) -> dict:
    """Inference on one set of N elements; ``slot_set-stream`` folds it in in chunks."""
    import torch

    device = torch.device(spec["device"])
    torch.set_num_threads(spec["threads"])
    name, n, chunk = spec["model"], spec["n"], spec["chunk"]
    stream = name == "slot_set-stream"
    base = dict(spec, model="slot_set" if stream else name, impl="flowrbc", n=min(n, chunk) if stream else n)
    flops = _flops_per_set(base, device, train=False) * (n / base["n"] if stream else 1.0)
    torch.manual_seed(0)
    model = _build(base, base["n"], device).eval()
    x = torch.randn(1, n, 2, device=device)  # the file's events, before the baseline RSS

    def infer():
        with torch.no_grad(), _autocast(base, device, False):
            if stream:
                state = model.init_state(1)
                for lo in range(0, n, chunk):
                    state = model.update(state, x[:, lo : lo + chunk])
                return model.finalize(state)
            return model(x)

    seconds = _timed_steps(infer, spec["steps"], device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    else:
        _map_large_blocks()
    before = _reset_peak()
    infer()  # once more, for the peak alone
    _sync(device)
    peak = torch.cuda.max_memory_allocated() if device.type == "cuda" else _peak_bytes() - before
    rate = _matmul_rate(device, min(n, 1 << 16), spec["width"], lambda: _autocast(base, device, False))
    return {"seconds": seconds, "cells_per_s": n / seconds, "peak_gib": peak / GIB, "flops_per_set": flops,
            "matmul_flop_s": rate, "roofline_s": flops / rate, "efficiency": flops / rate / seconds,
            "precision": _precision(base, device, False)}


# ----------------------------------------------------------------------------- parent side


def machine(args) -> dict:
    """What the figures depend on besides the code: the CPU model and its bf16 matrix units
    (``flowrbc.precision.cpu_capability``), torch's version, the threads, and the precision
    flowrbc's rule gives a model of ``--width`` for training and inference."""
    import torch

    from flowrbc.precision import cpu_capability, describe_precision

    torch.set_num_threads(args.threads)  # the children's count: the rule's measurement is per count
    device = torch.device(args.device)
    return {"cpu": cpu_capability(), "torch": str(torch.__version__), "threads": args.threads,
            "precision": {phase: describe_precision(args.precision, device, args.width, phase == "train")
                          for phase in ("train", "infer")}}


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _child_rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def run_child(spec: dict, args) -> dict:
    """Run one measurement in a fresh interpreter; stop it beyond ``--mem-limit``."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    load_before = _load()
    proc = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    sampled, start, reason = 0, time.monotonic(), None
    while proc.poll() is None:
        sampled = max(sampled, _child_rss(proc.pid))
        if sampled > args.mem_limit * GIB:
            reason = f"stopped: resident set over --mem-limit {args.mem_limit:g} GiB"
        elif time.monotonic() - start > args.timeout:
            reason = f"stopped: over --timeout {args.timeout:g} s"
        if reason:
            proc.kill()
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    record = dict(spec, load_before=load_before, load_after=_load(), sampled_peak_rss_gib=sampled / GIB)
    if reason is None and proc.returncode == 0:
        record.update(json.loads(out.strip().splitlines()[-1]))
    else:
        lines = err.strip().splitlines()
        record["error"] = reason or (lines[-1] if lines else f"exit status {proc.returncode}")
    return record


def _fmt(r: dict, key: str, spec: str) -> str:
    return format(r[key], spec) if key in r else "-"


def grid(args) -> list[dict]:
    records = []
    print(f"{'model':<22}{'N':>7} {'impl':<8}{'train/s':>9}{'roof':>8}{'GiB':>7}"
          f"{'infer/s':>9}{'roof':>8}{'GiB':>7}  load")
    for name in args.models:
        for n in args.sizes:
            row = {}
            for impl in args.impls:
                for phase in ("train", "infer"):
                    spec = dict(impl=impl, model=name, n=n, phase=phase, batch=args.batch, width=args.width,
                                steps=args.steps, threads=args.threads, device=args.device,
                                checkpoint=args.checkpoint, lean=args.lean, precision=args.precision,
                                heap=args.heap)
                    row[impl, phase] = r = run_child(spec, args)
                    records.append(r)
                tr, inf = row[impl, "train"], row[impl, "infer"]
                note = tr.get("error") or inf.get("error") or ""
                print(f"{name:<22}{n:>7} {impl:<8}{_fmt(tr, 'sets_per_s', '9.1f')}{_fmt(tr, 'roofline_sets_per_s', '8.0f')}"
                      f"{_fmt(tr, 'peak_gib', '7.2f')}{_fmt(inf, 'sets_per_s', '9.1f')}"
                      f"{_fmt(inf, 'roofline_sets_per_s', '8.0f')}{_fmt(inf, 'peak_gib', '7.2f')}  "
                      f"{tr['load_before'][0]:.2f}->{inf['load_after'][0]:.2f} {note}", flush=True)
            if {("flowrbc", "train"), ("papers", "train")} <= set(row):
                _print_ratio(records, row)
    return records


def _print_ratio(records: list[dict], row: dict) -> None:
    """flowrbc / papers for speed and memory, added to the flowrbc records as well."""
    for phase in ("train", "infer"):
        f, p = row["flowrbc", phase], row["papers", phase]
        if "sets_per_s" in f and "sets_per_s" in p:
            f["speed_ratio"] = f["sets_per_s"] / p["sets_per_s"]
            f["memory_ratio"] = f["peak_gib"] / p["peak_gib"] if p["peak_gib"] > 0 else math.nan
    parts = [f"{phase} {row['flowrbc', phase]['speed_ratio']:.2f}x speed, "
             f"{row['flowrbc', phase]['memory_ratio']:.2f} of the memory"
             for phase in ("train", "infer") if "speed_ratio" in row["flowrbc", phase]]
    if parts:
        print(f"{'':<30}flowrbc / papers: " + "; ".join(parts), flush=True)


def scaling(args) -> list[dict]:
    records = []
    print(f"{'model':<20}{'N':>9}{'seconds':>9}{'roofline s':>11}{'peak GiB':>10}  load")
    for name in args.scaling_models:
        for n in args.scaling_sizes:
            spec = dict(model=name, n=n, chunk=args.chunk, batch=1, width=args.width, steps=args.steps,
                        threads=args.threads, device=args.device, checkpoint=False, phase="infer")
            r = run_child(spec, args)
            records.append(r)
            print(f"{name:<20}{n:>9}{_fmt(r, 'seconds', '9.3f')}{_fmt(r, 'roofline_s', '11.3f')}"
                  f"{_fmt(r, 'peak_gib', '10.3f')}  {r['load_before'][0]:.2f}->{r['load_after'][0]:.2f} "
                  f"{r.get('error', '')}", flush=True)
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--sizes", nargs="+", type=int, default=DEFAULT_SIZES, help="elements per set")
    ap.add_argument("--impls", nargs="+", default=["flowrbc", "papers"], choices=["flowrbc", "papers"])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up (median)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads in each child")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto")
    ap.add_argument("--lean", action=argparse.BooleanOptionalAction, default=None,
                    help="flowrbc: ModelConfig.lean (fused set norm + linear); default: as `flowrbc train` decides")
    ap.add_argument("--checkpoint", action="store_true", help="flowrbc: recompute blocks in backward")
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"],
                    help="flowrbc's precision (flowrbc.precision); auto: as `flowrbc train` decides")
    ap.add_argument("--heap", default="flowrbc", choices=["flowrbc", "both", "none"],
                    help="whose children keep freed memory on the heap (flowrbc.heap): flowrbc's, as "
                         "`flowrbc train` does (default), both, or none (glibc's defaults)")
    ap.add_argument("--scaling", action="store_true", help="inference vs set size instead of the grid")
    ap.add_argument("--scaling-models", nargs="+", default=list(SCALING_MODELS),
                    choices=list(SCALING_MODELS) + [m for m in MODELS if m not in SCALING_MODELS])
    ap.add_argument("--scaling-sizes", nargs="+", type=int, default=DEFAULT_SCALING_SIZES)
    ap.add_argument("--chunk", type=int, default=10_000, help="elements per streamed chunk")
    ap.add_argument("--toy", action="store_true", help="tiny sizes, one step: checks the harness runs")
    ap.add_argument("--mem-limit", type=float, default=20.0, help="GiB of resident set per child")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per child")
    ap.add_argument("--json", type=Path, help="write every record here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spec = json.loads(args.child)
        run = run_scaling_child if "chunk" in spec else run_grid_child
        from flowrbc.heap import keep_heap

        heap = spec.get("heap", "none")  # the scaling children measure single sets: glibc's defaults
        with keep_heap(heap == "both" or heap == spec.get("impl") == "flowrbc") as kept:
            print(json.dumps(dict(run(spec), heap_kept=kept)))
        return
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.toy:  # tiny shapes; sizes and models as given, else small defaults
        args.batch, args.width, args.steps, args.chunk = 4, 16, 1, 100
        args.sizes = [16, 40] if args.sizes == DEFAULT_SIZES else args.sizes
        args.scaling_sizes = [200, 2000] if args.scaling_sizes == DEFAULT_SCALING_SIZES else args.scaling_sizes
    host = machine(args)
    units = host["cpu"]["bf16_units"]
    units = "unknown" if units is None else ", ".join(units) or "none"
    print(f"cpu {host['cpu']['model']} (bf16 matrix units: {units}), torch {host['torch']}; flowrbc train "
          f"{host['precision']['train']}, inference {host['precision']['infer']}; the baseline fp32", flush=True)
    print(f"device {args.device}, threads {args.threads}, batch {args.batch}, width {args.width}, "
          f"steps {args.steps}; load average {_load()}", flush=True)
    records = scaling(args) if args.scaling else grid(args)
    print(f"load average {_load()}")
    if args.json:
        meta = {"mode": "scaling" if args.scaling else "grid", "device": args.device, "cpu_count": os.cpu_count(),
                **host}
        tmp = args.json.with_suffix(args.json.suffix + ".tmp")
        tmp.write_text(json.dumps({"meta": meta, "records": records}, indent=1) + "\n")
        tmp.replace(args.json)


if __name__ == "__main__":
    main()
