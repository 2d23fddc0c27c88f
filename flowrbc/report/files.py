"""Patient reports for FCS files: ``<stem>.html`` (self-contained) and ``<stem>.png`` per file.

The numbers come from ``flowrbc.predict.predict_file`` — the function ``flowrbc predict``
calls — and are never recomputed here; the page adds what a prediction record lacks: the
cells (read and gated again with predict's own reader, channel selection and gate) for the
cytogram and the classic indices, and the model's metadata from its checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from flowrbc.errors import FlowrbcError
from flowrbc.report.page import ModelInfo, PatientCase, failure_page, patient_page


def model_info(loaded) -> ModelInfo:
    """Metadata of a loaded model (``flowrbc.predict.LoadedModel``) from its checkpoint."""
    from flowrbc.checkpoint import load_checkpoint

    payload = load_checkpoint(loaded.path)
    cfg = payload.get("model_config", {})
    version = (f"flowrbc {payload.get('versions', {}).get('flowrbc', '?')}, checkpoint format "
               f"{payload.get('format_version')}, digest {str(payload.get('digest', ''))[:12]}")
    cal = (payload.get("calibration") or {}).get("anemia", {})
    return ModelInfo(
        path=str(loaded.path),
        description=f"{cfg.get('family', loaded.family)}, {cfg.get('depth', '?')} blocks, width {cfg.get('width', '?')}"
        + (f", best epoch {payload['best_epoch']}" if "best_epoch" in payload else ""),
        version=version,
        cohort=str(payload.get("cohort") or "unknown cohort"),
        cells=loaded.cells,
        healthy=payload.get("healthy_reference"),
        threshold=float(cal.get("threshold", 0.5)),
    )


def gated_cells(loaded, path: str | os.PathLike, overrides: dict[str, str] | None = None,
                scales: dict[str, float] | None = None) -> np.ndarray:
    """The cells ``predict_file`` predicts from: (n, 2) [volume, hemoglobin], scaled
    (``--scale``) and RBC-gated."""
    from flowrbc import pp
    from flowrbc.io.fcs import read_fcs_data
    from flowrbc.io.units import apply_scales
    from flowrbc.predict import select_channels

    data = read_fcs_data(path)
    cols = select_channels(loaded, data.names, data.labels, str(path), overrides)
    raw = apply_scales(data.events[:, cols], [r for r, _ in loaded.channels], scales)
    return raw[pp.rbc_gate(raw[:, 0], raw[:, 1])]


class _Names:
    """Output stems, unique within one directory (``a``, ``a_2``, ...)."""

    def __init__(self) -> None:
        self.used: set[str] = set()

    def __call__(self, stem: str) -> str:
        name, k = stem, 1
        while name in self.used:
            k += 1
            name = f"{stem}_{k}"
        self.used.add(name)
        return name


def file_case(loaded, pred, overrides: dict[str, str] | None, seed: int | None,
              rbc_count: float | None) -> PatientCase:
    """A prediction record and the gated cells of its file."""
    path = Path(pred.file)
    return PatientCase(name=path.stem, source=f"file {path}", values=pred.to_dict(),
                       cells=gated_cells(loaded, path, overrides, pred.scales), seed=seed, rbc_count=rbc_count)


def write_case(case: PatientCase, info: ModelInfo, out_dir: Path, stem: str) -> Path:
    """Render one case: the figure (PNG beside the page) and the page; atomic writes."""
    from flowrbc.checkpoint import atomic_write_bytes, atomic_write_text
    from flowrbc.report.figures import patient_figure

    png = patient_figure(case.cells, info.healthy, title=case.name)
    atomic_write_bytes(out_dir / f"{stem}.png", png)
    return atomic_write_text(out_dir / f"{stem}.html", patient_page(case, info, png))


def write_patient_pages(loaded, predictions: Sequence, out_dir: str | os.PathLike, *,
                        overrides: dict[str, str] | None = None, seed: int | None = None,
                        rbc_count: float | None = None, info: ModelInfo | None = None) -> list[Path]:
    """Pages for predictions already made (``flowrbc.predict.Prediction``) -> the HTML paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = info or model_info(loaded)
    names = _Names()
    written = []
    for pred in predictions:
        case = file_case(loaded, pred, overrides, seed, rbc_count)
        written.append(write_case(case, info, out, names(case.name)))
    return written


@dataclass
class FilesReport:
    pages: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # file, message (a page says it too)


def report_files(loaded, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 overrides: dict[str, str] | None = None, coverage: float | None = None, seed: int = 0,
                 covariates: dict[str, Any] | None = None, rbc_count: float | None = None,
                 scales: dict[str, float] | None = None,
                 on_page: Callable[[Path], None] | None = None) -> FilesReport:
    """Predict each file as ``flowrbc predict`` does and write its page; a file that gives no
    prediction gets a page saying why, and is listed in ``failed``."""
    from flowrbc.predict import predict_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = model_info(loaded)
    names = _Names()
    result = FilesReport()
    for p in map(Path, paths):
        try:
            pred = predict_file(loaded, p, overrides=overrides, coverage=coverage, seed=seed, covariates=covariates,
                                scales=scales)
            page = write_case(file_case(loaded, pred, overrides, seed, rbc_count), info, out, names(p.stem))
        except (FlowrbcError, OSError) as exc:
            from flowrbc.checkpoint import atomic_write_text

            message = str(exc) if isinstance(exc, FlowrbcError) else f"{p}: {exc.strerror or exc}"
            result.failed.append((p, message))
            page = atomic_write_text(out / f"{names(p.stem)}.html", failure_page(p.stem, f"file {p}", message))
        result.pages.append(page)
        if on_page is not None:
            on_page(page)
    return result
