"""Cohort scale benchmark: simulate, write and reload a cohort; wall time and peak RSS per step.

    python benchmarks/bench_cohort.py                         # 100,000 samples x 1,000 cells (10^8)
    python benchmarks/bench_cohort.py --patients 2000 --out /tmp/c.h5ad

Also prints the simulator's speed, its per-condition summary and bound (best possible errors) for a
2,000-patient cohort. Peak RSS is the process high-water mark (``ru_maxrss``) after each step.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def step(name: str, fn):
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    print(f"{name:<28} {dt:8.1f} s   peak RSS {peak_gib():6.2f} GiB", flush=True)
    return out, dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="cohort path (default: a temporary file, removed)")
    ap.add_argument("--skip-summary", action="store_true", help="skip the 2,000-patient simulator summary")
    args = ap.parse_args()

    import numpy as np
    from flowrbc.io.builtin import synthetic_cohort
    from flowrbc.io.cohort import read_cohort, write_cohort
    from flowrbc.synthetic.simulate import simulate_cohort, summary_table

    if not args.skip_summary:
        sim, dt = step("simulate 2,000 x 1,000", lambda: simulate_cohort(2000, 1000, seed=args.seed))
        print(f"simulator speed: {len(sim.cells) / dt / 1e6:.1f} M cells/s (patients + cells)")
        print(summary_table(sim.samples).to_string(float_format=lambda v: f"{v:.2f}"))
        print("bound:", {k: round(v, 3) for k, v in sim.bound.items()})
        del sim

    n_cells = args.patients * args.cells
    print(f"\ncohort: {args.patients:,} samples x {args.cells:,} cells = {n_cells:,} cells")
    tmpdir = None
    path = args.out
    if path is None:
        tmpdir = tempfile.mkdtemp(prefix="flowrbc-bench-", dir=os.environ.get("TMPDIR"))
        path = Path(tmpdir) / "cohort.h5ad"
    try:
        sim, dt = step("simulate only", lambda: simulate_cohort(args.patients, args.cells, seed=args.seed))
        print(f"  {n_cells / dt / 1e6:.1f} M cells/s")
        del sim
        cohort, _ = step("synthetic_cohort (+gate, QC)", lambda: synthetic_cohort(args.patients, args.cells, args.seed))
        _, dt = step("write_cohort", lambda: write_cohort(cohort, path))
        size = path.stat().st_size
        print(f"  file {size / 2**30:.2f} GiB, {size / dt / 2**20:.0f} MiB/s")
        ref_sum = float(cohort.X[:: max(1, n_cells // 10**6)].sum(dtype=np.float64))
        del cohort
        back, _ = step("read_cohort", lambda: read_cohort(path))
        assert back.n_samples == args.patients
        assert float(back.X[:: max(1, n_cells // 10**6)].sum(dtype=np.float64)) == ref_sum
        print(f"peak RSS overall {peak_gib():.2f} GiB")
    finally:
        if tmpdir is not None:
            for p in Path(tmpdir).iterdir():
                p.unlink()
            os.rmdir(tmpdir)


if __name__ == "__main__":
    main()
