"""Patient reports for FCS files: ``<stem>.html`` (self-contained) and ``<stem>.png`` per file.

The numbers come from ``flowrbc.predict.predict_file`` — the function ``flowrbc predict``
calls — and are never recomputed here; the page adds what a prediction record lacks: the
gated cells the prediction carries (``Prediction.cells``, so that no file is read twice) for
the cytogram and the classic indices, and the model's metadata from its checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from flowrbc.errors import FlowrbcError
from flowrbc.report.page import ModelInfo, PatientCase, failure_page, patient_page


def model_info(predictor) -> ModelInfo:
    """What a page says of the model (``flowrbc.predictor.Predictor``), from its checkpoint's metadata."""
    meta = predictor.meta
    cfg = meta.get("model_config") or {}
    version = (f"flowrbc {(meta.get('versions') or {}).get('flowrbc', '?')}, checkpoint format "
               f"{meta.get('format_version')}, digest {str(meta.get('digest') or '')[:12]}")
    best = meta.get("best_epoch")
    return ModelInfo(
        path=str(predictor.path),
        description=f"{cfg.get('family', predictor.family)}, {cfg.get('depth', '?')} blocks, width {cfg.get('width', '?')}"
        + (f", best epoch {best}" if best is not None else ""),
        version=version,
        cohort=str(meta.get("cohort") or "unknown cohort"),
        cells=predictor.set_size,
        healthy=meta.get("healthy_reference"),
        threshold=float(predictor.calibration.get("anemia", {}).get("threshold", 0.5)),
    )


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


def file_case(pred, seed: int | None, rbc_count: float | None, predictor=None) -> PatientCase:
    """A prediction (``flowrbc.predict.Prediction``) and the gated cells it was made from;
    with ``predictor``, its explanation too (``explained``)."""
    path = Path(pred.file)
    explanation = None
    if predictor is not None and pred.cells is not None:
        _, cov_raw = predictor.covariates.values({k: pred.covariates.get(k) for k in predictor.covariates.names})
        explanation = explained(predictor, pred.cells, cov_raw, seed or 0)
    return PatientCase(name=path.stem, source=f"file {path}", values=pred.to_dict(), cells=pred.cells, seed=seed,
                       rbc_count=rbc_count, explanation=explanation)


def explained(predictor, cells, cov_raw, seed: int) -> dict[str, Any] | None:
    """The attribution panel of a sample's page: ``cells`` (n, C) gated, role order,
    ``cov_raw`` (k,) NaN = unknown (``flowrbc.explain``, the first regression target, else the
    first target); None for a checkpoint without reference cells."""
    if predictor.reference_cells is None or not len(cells):
        return None
    from flowrbc.explain import explain_cells
    from flowrbc.explain_io import region_sentence

    e = explain_cells(predictor, cells, cov_raw, seed=seed)
    target = next((t for t, s in predictor.targets.items() if s["kind"] == "regression"), next(iter(predictor.targets)))
    units = "points" if predictor.targets[target]["kind"] == "regression" else "log-odds"
    return {"target": target, "attribution": e.attributions[target], "units": units, "regions": len(e.counts),
            "prediction": e.prediction[target], "reference": e.reference[target], "shared": e.shared[target],
            "sentence": region_sentence(e, target, predictor.roles, cells)}


def write_case(case: PatientCase, info: ModelInfo, out_dir: Path, stem: str) -> Path:
    """Render one case: the figure (PNG beside the page) and the page; atomic writes."""
    from flowrbc.checkpoint import atomic_write_bytes, atomic_write_text
    from flowrbc.report.figures import patient_figure

    e = case.explanation
    png = patient_figure(case.cells, info.healthy, title=case.name,
                         attribution=None if e is None else (e["attribution"], f"{e['target']} ({e['units']})"))
    atomic_write_bytes(out_dir / f"{stem}.png", png)
    return atomic_write_text(out_dir / f"{stem}.html", patient_page(case, info, png))


def write_patient_pages(predictor, predictions: Sequence, out_dir: str | os.PathLike, *,
                        seed: int | None = None, rbc_count: float | None = None,
                        info: ModelInfo | None = None) -> list[Path]:
    """Pages for predictions already made (``flowrbc.predict.Prediction``, each carrying the
    cells its file gave) -> the HTML paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = info or model_info(predictor)
    names = _Names()
    written = []
    for pred in predictions:
        case = file_case(pred, seed, rbc_count, predictor)
        written.append(write_case(case, info, out, names(case.name)))
    return written


@dataclass
class FilesReport:
    pages: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)  # file, message (a page says it too)


def report_files(predictor, paths: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 overrides: dict[str, str] | None = None, coverage: float | None = None, seed: int = 0,
                 covariates: dict[str, Any] | None = None, rbc_count: float | None = None,
                 scales: dict[str, float] | None = None, dataset: int = 0,
                 on_page: Callable[[Path], None] | None = None) -> FilesReport:
    """Predict each file as ``flowrbc predict`` does and write its page; a file that gives no
    prediction gets a page saying why, and is listed in ``failed``."""
    from flowrbc.predict import predict_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = model_info(predictor)
    names = _Names()
    result = FilesReport()
    for p in map(Path, paths):
        try:
            pred = predict_file(predictor, p, overrides=overrides, coverage=coverage, seed=seed, covariates=covariates,
                                scales=scales, dataset=dataset)
            page = write_case(file_case(pred, seed, rbc_count, predictor), info, out, names(p.stem))
        except (FlowrbcError, OSError) as exc:
            from flowrbc.checkpoint import atomic_write_text

            message = str(exc) if isinstance(exc, FlowrbcError) else f"{p}: {exc.strerror or exc}"
            result.failed.append((p, message))
            page = atomic_write_text(out / f"{names(p.stem)}.html", failure_page(p.stem, f"file {p}", message))
        result.pages.append(page)
        if on_page is not None:
            on_page(page)
    return result
