"""Training and inference sets/s per model family (CPU, and CUDA when present).

    python benchmarks/bench_train.py [--cells 1000] [--batch 64] [--width 64] [--steps 5]

Random sets of the given shape; one warm-up step, then the mean over ``--steps``. Peak
memory is reported on CUDA. Figures go into notes, never into tests.
"""

from __future__ import annotations

import argparse
import time

import torch

from flowrbc.models import ModelConfig, build_model

FAMILIES = {
    "deepsets": {},
    "deepsets++": {},
    "set_transformer": {"inducing": 16},
    "set_transformer++": {"inducing": 16},
    "slot_set": {},
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(family: str, device: torch.device, *, cells: int, batch: int, width: int, depth: int | None, steps: int):
    model = build_model(ModelConfig(family=family, width=width, depth=depth,
                                    outputs={"hematocrit": 1, "anemia": 1}, **FAMILIES[family])).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = torch.randn(batch, cells, 2, device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def train_step():
        with amp:
            out = model(x)
            loss = out["hematocrit"].float().pow(2).mean() + out["anemia"].float().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def infer_step():
        with torch.no_grad(), amp:
            model(x)

    rates = []
    for step in (train_step, infer_step):
        step()
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        _sync(device)
        rates.append(batch * steps / (time.perf_counter() - t0))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return rates[0], rates[1], peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--depth", type=int, default=None)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"B={args.batch} N={args.cells} width={args.width} depth={args.depth or 'family default'}")
    print(f"{'device':6} {'family':18} {'train sets/s':>12} {'infer sets/s':>12} {'peak GiB':>9}")
    for device in devices:
        for family in FAMILIES:
            train, infer, peak = bench(family, device, cells=args.cells, batch=args.batch, width=args.width,
                                       depth=args.depth, steps=args.steps)
            print(f"{device.type:6} {family:18} {train:12.1f} {infer:12.1f} {peak:9.2f}", flush=True)


if __name__ == "__main__":
    main()
