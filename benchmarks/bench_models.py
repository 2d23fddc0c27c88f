"""Training-step speed and peak memory of the set models on this machine.

Each configuration runs in a fresh subprocess (so peak RSS is its own): B sets of N
elements with C = 2 features, width 128, forward + backward + Adam step; sets/s from the
median step time after one warm-up step. Printed beside the reference implementation's
figures on this project's 2-core CPU (DESIGN section 8).

    python3 benchmarks/bench_models.py                  # all configurations, 3 steps each
    python3 benchmarks/bench_models.py --only deepsets++-25 --steps 5 --checkpoint

Figures are wall-clock: on a shared machine, read them against the load average printed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

# name -> (ModelConfig kwargs, reference sets/s, reference peak GiB)
CONFIGS = {
    "deepsets-3": (dict(family="deepsets", depth=3), 134.0, 0.6),
    "deepsets++-25": (dict(family="deepsets++", depth=25), 4.3, 10.5),
    "deepsets++-50": (dict(family="deepsets++", depth=50), 2.3, 20.7),
    "set_transformer-2": (dict(family="set_transformer", depth=2), 36.6, 2.3),
    "set_transformer++-8": (dict(family="set_transformer++", depth=8), 5.8, 9.7),
    "set_transformer++-16": (dict(family="set_transformer++", depth=16), 2.9, 18.1),
    "slot_set": (dict(family="slot_set"), None, None),
    # ISAB with 16 inducing points: O(N m) attention instead of SAB's O(N^2)
    "set_transformer-2-isab16": (dict(family="set_transformer", depth=2, inducing=16), None, None),
    "set_transformer++-16-isab16": (dict(family="set_transformer++", depth=16, inducing=16), None, None),
}


def _child(spec: dict) -> dict:
    """Run in the subprocess: time ``steps`` training steps, report peak RSS."""
    import resource
    import statistics
    import time

    import torch

    from flowrbc.models import ModelConfig, build_model

    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    config = ModelConfig(width=spec["width"], checkpoint=spec["checkpoint"], **spec["model"])
    model = build_model(config).train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.randn(spec["batch"], spec["n"], 2)
    y = torch.randn(spec["batch"], 1)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # GiB (Linux: KiB)
    times = []
    for _ in range(spec["steps"] + 1):
        start = time.perf_counter()
        loss = (model(x)["hematocrit"] - y).pow(2).mean()
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        times.append(time.perf_counter() - start)
    step = statistics.median(times[1:])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    params = sum(p.numel() for p in model.parameters())
    return {"step_s": step, "sets_per_s": spec["batch"] / step, "peak_gib": peak, "base_gib": base, "params": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), help="configurations to run")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=1000, help="elements per set")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--checkpoint", action="store_true", help="recompute blocks in backward")
    parser.add_argument(
        "--mmap-threshold", type=int, default=None, metavar="BYTES",
        help="set glibc MALLOC_MMAP_THRESHOLD_ in the child (e.g. 1048576): freed activation "
        "buffers go back to the OS at once instead of fragmenting the heap (halves peak RSS here)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"B={args.batch} N={args.n} width={args.width} threads={args.threads} "
        f"checkpoint={args.checkpoint} mmap_threshold={args.mmap_threshold} load average {load}"
    )
    header = f"{'model':<28}{'params':>9}{'step s':>9}{'sets/s':>9}{'peak GiB':>10}{'ref sets/s':>12}{'ref GiB':>9}"
    print(header)
    for name in args.only or CONFIGS:
        model, ref_speed, ref_mem = CONFIGS[name]
        spec = dict(
            model=model, steps=args.steps, batch=args.batch, n=args.n, width=args.width,
            threads=args.threads, checkpoint=args.checkpoint,
        )
        env = dict(os.environ)
        if args.mmap_threshold is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            print(f"{name:<28} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr else proc.returncode}")
            continue
        r = json.loads(proc.stdout.strip().splitlines()[-1])
        ref_s = "-" if ref_speed is None else f"{ref_speed:.1f}"
        ref_m = "-" if ref_mem is None else f"{ref_mem:.1f}"
        print(
            f"{name:<28}{r['params']:>9}{r['step_s']:>9.2f}{r['sets_per_s']:>9.1f}"
            f"{r['peak_gib']:>10.2f}{ref_s:>12}{ref_m:>9}",
            flush=True,
        )


if __name__ == "__main__":
    main()
