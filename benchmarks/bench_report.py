"""Report rendering time per patient: prediction, figure (PNG) and page, each timed.

Simulates FCS files (5,000 cells each, the examples' size), then predicts and renders each
file's page with the given checkpoint and prints the median seconds per patient of each step
(wall clock); a second rendering of each page measures the CPU time of figure + page. The
first page pays matplotlib's import and font set-up; it is timed apart.

    python3 benchmarks/bench_report.py [--model runs/latest/model.pt] [--patients 8] [--cells 5000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from flowrbc.predict import load_model, predict_file  # noqa: E402
from flowrbc.report.figures import patient_figure  # noqa: E402
from flowrbc.report.files import file_case, model_info  # noqa: E402
from flowrbc.report.page import patient_page  # noqa: E402
from flowrbc.synthetic.simulate import write_simulated  # noqa: E402


def _timed(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def _render(case, info) -> str:
    return patient_page(case, info, patient_figure(case.cells, info.healthy))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="runs/latest/model.pt")
    ap.add_argument("--patients", type=int, default=8)
    ap.add_argument("--cells", type=int, default=5000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = load_model(args.model)
    info = model_info(model)
    with tempfile.TemporaryDirectory() as tmp:
        write_simulated(tmp, n_patients=args.patients, n_cells=args.cells, seed=11)
        files = sorted(Path(tmp).glob("*.fcs"))
        _, first = _timed(_render, file_case(model, predict_file(model, files[0]), None, 0, None), info)
        steps: dict[str, list[float]] = {"predict": [], "cells + indices": [], "figure": [], "page": [], "total": []}
        cpu = []
        for path in files:
            pred, t_pred = _timed(predict_file, model, path)
            case, t_case = _timed(file_case, model, pred, None, 0, None)
            png, t_fig = _timed(patient_figure, case.cells, info.healthy, case.name)
            _, t_page = _timed(patient_page, case, info, png)
            total = t_pred + t_case + t_fig + t_page
            for key, value in zip(steps, (t_pred, t_case, t_fig, t_page, total), strict=True):
                steps[key].append(value)
            t = time.process_time()
            _render(case, info)
            cpu.append(time.process_time() - t)
    print(f"model {args.model} ({info.description}); {args.patients} patients x {args.cells} cells; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"first page (matplotlib import + fonts): {first:.2f} s")
    for key, values in steps.items():
        print(f"{key:>16}: median {statistics.median(values):.3f} s, max {max(values):.3f} s per patient (wall)")
    print(f"figure + page CPU time: median {statistics.median(cpu):.3f} s per patient (less sensitive to load)")


if __name__ == "__main__":
    main()
