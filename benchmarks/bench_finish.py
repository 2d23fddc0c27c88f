"""Cohort-scale finishing: moment features of 2x10^7 cells, and the calibrate-and-test step.

    python3 benchmarks/bench_finish.py                      # 20,000 samples x 1,000 cells
    python3 benchmarks/bench_finish.py --lexsort            # also time the global-sort percentiles
    python3 benchmarks/bench_finish.py --skip-train         # moment features only

Part 1 times ``segment_percentiles`` and ``moment_features`` on the gated synthetic cohort
(ragged segments) and on equal, contiguous segments of the same cells. ``--lexsort`` also
times one channel through one global ``np.lexsort`` by (sample, value), the method this
replaced, and checks both give the same percentiles.

Part 2 trains one epoch of the default model on the cohort and times what follows the
epochs (``flowrbc.train``: the set model's validation and test predictions, calibration,
scores, the checkpoint, the reports): from the log line "calibrating and testing" to the
return of ``train_cohort``, and the whole run. Each part is timed by a wrapper around it,
also those that now run on a second thread during the epochs (``_fit_index``,
``_fit_baseline``, ``_qc_reference``, ``healthy_reference``: they read the cohort only) and
so sit outside the finishing step. Figures are wall-clock; read them against the load
average printed before and after.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def timed(fn, *args, repeat: int = 1):
    """(result, best wall time of ``repeat`` calls)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args)
        best = min(best, time.perf_counter() - t)
    return out, best


def lexsort_percentiles(values: np.ndarray, offsets: np.ndarray, qs) -> np.ndarray:
    """The global-sort method: one stable sort of all cells by (sample, value)."""
    counts = np.diff(offsets)
    order = np.lexsort((values, np.repeat(np.arange(len(counts)), counts)))
    s = values[order]
    pos = np.asarray(qs, dtype=np.float64)[None, :] / 100.0 * (counts[:, None] - 1)  # (S, Q)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, counts[:, None] - 1)
    frac = pos - lo
    start = offsets[:-1, None]
    return s[start + lo] * (1 - frac) + s[start + hi] * frac


def moment_part(cohort, cells: int, with_lexsort: bool) -> None:
    from flowrbc.metrics import PERCENTILES, moment_features, segment_percentiles

    cols = cohort.role_columns(("volume", "hemoglobin"))
    vol = cohort.X[:, cols[0]].astype(np.float64)
    hb = cohort.X[:, cols[1]].astype(np.float64)
    n = len(cohort.offsets) - 1
    equal = np.arange(n + 1, dtype=np.int64) * cells  # equal, contiguous segments of the same cells
    take = min(len(vol), n * cells)
    vol_eq = np.resize(vol[:take], n * cells)
    hb_eq = np.resize(hb[:take], n * cells)
    print(f"\nmoment features: {n:,} samples, {len(vol):,} gated cells (ragged), {n * cells:,} (equal)  "
          f"[load {load()}]")
    for label, v, h, offs in (("ragged", vol, hb, cohort.offsets), ("equal", vol_eq, hb_eq, equal)):
        _, t_pct = timed(segment_percentiles, v, offs, repeat=3)
        _, t_all = timed(moment_features, v, h, offs, repeat=3)
        print(f"  {label:<7} segment_percentiles (one channel) {t_pct:6.2f} s   "
              f"moment_features (3 channels) {t_all:6.2f} s   [load {load()}]")
    if with_lexsort:
        ref, t_ref = timed(lexsort_percentiles, vol, cohort.offsets, PERCENTILES)
        new = segment_percentiles(vol, cohort.offsets)
        print(f"  ragged  lexsort percentiles (one channel) {t_ref:6.2f} s; "
              f"max |difference| {np.abs(ref - new).max():.2e}   [load {load()}]")


def train_part(cohort, threads: int) -> None:
    import flowrbc.assess as assess
    import flowrbc.checkpoint as checkpoint
    import flowrbc.hybrid as hybrid
    import flowrbc.metrics as metrics
    import flowrbc.report.reference as reference
    import flowrbc.train as train
    from flowrbc.predictor import Predictor
    from flowrbc.train import TrainConfig, train_cohort

    parts: dict[str, float] = {}
    targets = [(assess, name) for name in ("finish", "calibrate", "score", "cohort_fits")]
    targets += [(hybrid, "fit_index_models"), (metrics, "fit_moment_baseline"), (train, "_write_reports"),
                (Predictor, "prepare_cohort"), (Predictor, "predict"), (reference, "healthy_reference"),
                (checkpoint, "save_checkpoint")]
    originals = [(owner, name, vars(owner)[name]) for owner, name in targets]  # a classmethod as itself

    def timer(name: str, fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                parts[name] = parts.get(name, 0.0) + time.perf_counter() - t

        return run

    marks: dict[str, float] = {}

    def log(msg: str) -> None:
        if "calibrating and testing" in msg:
            marks["finish"] = time.perf_counter()
            parts.pop("save_checkpoint", None)  # the checkpoints written during the epochs
        print(f"  {msg}", flush=True)

    config = TrainConfig(epochs=1, threads=threads)
    print(f"\ntraining: {config.model} depth {config.depth} width {config.width}, 1 epoch, "
          f"{config.set_size} cells per set  [load {load()}]")
    with tempfile.TemporaryDirectory(prefix="flowrbc-finish-") as tmp:
        for owner, name, _ in originals:
            setattr(owner, name, timer(name, getattr(owner, name)))  # bound for a classmethod
        t0 = time.perf_counter()
        try:
            train_cohort(cohort, config, Path(tmp) / "run", log=log)
        finally:
            end = time.perf_counter()
            for owner, name, raw in originals:
                setattr(owner, name, raw)
    print(f"  whole run {end - t0:.1f} s; finishing step {end - marks['finish']:.1f} s  [load {load()}]")
    for _, name, _ in originals:
        if name in parts:
            print(f"    {name:<22} {parts[name]:6.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=20_000)
    ap.add_argument("--cells", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for training (TrainConfig default)")
    ap.add_argument("--lexsort", action="store_true", help="also time the global-sort method (slow)")
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    from flowrbc.io.builtin import synthetic_cohort

    print(f"load average {load()}")
    cohort, dt = timed(synthetic_cohort, args.patients, args.cells)
    print(f"synthetic cohort {args.patients:,} x {args.cells:,}: {dt:.1f} s")
    moment_part(cohort, args.cells, args.lexsort)
    if not args.skip_train:
        train_part(cohort, args.threads)
    print(f"load average {load()}")


if __name__ == "__main__":
    main()
