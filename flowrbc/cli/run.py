"""``flowrbc train | evaluate | predict | embed``: parse, call the library, print."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from flowrbc.cli._app import app
from flowrbc.cli._common import (
    AgeOpt,
    ChannelOpt,
    DatasetOpt,
    Device,
    DeviceOpt,
    Format,
    FormatOpt,
    Precision,
    ScaleOpt,
    SeedOpt,
    SexOpt,
    console,
    covariate_values,
    err_console,
    fail,
    parse_channel_map,
    parse_scale_map,
    progress,
    user_errors,
)
from flowrbc.cli._format import number as _fmt


class Read(str, Enum):
    all = "all"
    sets = "sets"


DEFAULT_MODEL = Path("runs/latest/model.pt")
ModelOpt = Annotated[Path, typer.Option("--model", "-m", help="Checkpoint (model.pt or its run directory).")]
CoverageOpt = Annotated[Optional[float], typer.Option("--coverage", help="Nominal coverage of the hematocrit interval.")]


def _load_cohort(path: Optional[Path], patients: Optional[int] = None, cells: Optional[int] = None, seed: int = 0):
    """The cohort file, or the built-in synthetic cohort (generated once, then cached)."""
    if path is None:
        from flowrbc.io.builtin import DEFAULT_CELLS, DEFAULT_PATIENTS, load_default_cohort

        n, m = patients or DEFAULT_PATIENTS, cells or DEFAULT_CELLS
        with err_console.status(f"loading the built-in synthetic cohort ({n} patients × {m} cells, seed {seed})"):
            return load_default_cohort(n, m, seed)
    if patients is not None or cells is not None:
        fail("--patients/--cells size the built-in cohort; they do not apply to a cohort file")
    from flowrbc.io.cohort import read_cohort

    return read_cohort(path)


def _count(option: str, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        fail(f"{option} {value!r}: a whole number or 'all'")


@app.command()
def train(
    cohort: Annotated[Optional[Path], typer.Argument(help="Cohort .h5ad; default: the built-in synthetic cohort.")] = None,
    model: Annotated[str, typer.Option("--model", help="deepsets, deepsets++, set_transformer, set_transformer++, slot_set.")] = "deepsets++",
    depth: Annotated[Optional[int], typer.Option("--depth", help="Encoder blocks.")] = None,
    width: Annotated[Optional[int], typer.Option("--width", help="Hidden size.")] = None,
    norm: Annotated[Optional[str], typer.Option("--norm", help="none, layer, feature or set.")] = None,
    residual: Annotated[Optional[str], typer.Option("--residual", help="clean, nonclean or none.")] = None,
    inducing: Annotated[Optional[int], typer.Option("--inducing", help="Set Transformer families: ISAB inducing "
                                                    "points (default 32, as the papers); 0: full self-attention.",
                                                    min=0)] = None,
    lean: Annotated[Optional[bool], typer.Option("--lean/--no-lean", help="Set norm + linear as one node that keeps "
                                                 "only its input for backward: about half the activation memory of "
                                                 "deep ++ models. Default: on for 8 or more set-norm blocks trained "
                                                 "in fp32 on a CPU (measured: same speed there), off otherwise.")
                    ] = None,
    target: Annotated[Optional[list[str]], typer.Option("--target", help="hematocrit, hemoglobin, anemia (repeatable).")] = None,
    covariate: Annotated[Optional[list[str]], typer.Option(
        "--covariate", help="Per-sample input besides the cells: sex, age or another numeric sample column "
        "(repeatable); 'none' for cells only. Default: sex and age where the cohort has them.")] = None,
    patients: Annotated[Optional[int], typer.Option("--patients", help="Built-in cohort: patients (default 2000).",
                                                    min=10)] = None,
    cells: Annotated[Optional[int], typer.Option("--cells", help="Built-in cohort: cells per patient (default 1000).",
                                                 min=1)] = None,
    fresh: Annotated[int, typer.Option("--fresh", help="Built-in cohort: also score on this many fresh patients "
                                       "of another seed (0: none).", min=0)] = 5000,
    set_size: Annotated[Optional[str], typer.Option("--set-size", help="Cells per training set, redrawn every "
                                                    "step (default 250), or 'all': as many as each patient has, "
                                                    "and prediction on every cell.")] = None,
    read: Annotated[Read, typer.Option("--read", help="How the predictor reads a patient: all (default): every "
                                       "cell in one set, the decoder refitted on whole-patient embeddings after "
                                       "the epochs where that lowers the validation loss by more than 2 SE; "
                                       "sets: the average over disjoint sets of --set-size cells.")]
    = Read.all,
    epochs: Annotated[Optional[int], typer.Option("--epochs")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Sets per step (per process).")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr")] = None,
    weight_decay: Annotated[Optional[float], typer.Option("--weight-decay")] = None,
    device: DeviceOpt = Device.auto,
    precision: Annotated[Precision, typer.Option("--precision", help="auto: bf16 on CUDA, and on a CPU with bf16 "
                                                 "matrix units (Intel AMX, AVX512-BF16, Arm BF16/SME) for a width "
                                                 "of 128 or more (prediction: 64), else fp32. The model predicts "
                                                 "in the precision it was validated in.")] = Precision.auto,
    seed: SeedOpt = 0,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Run directory (default runs/<time>-<model>).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out (default runs/latest).")] = False,
    coverage: Annotated[float, typer.Option("--coverage", help="Nominal coverage of the hematocrit interval.")] = 0.9,
    hybrid: Annotated[bool, typer.Option("--hybrid/--set-only", help="Hematocrit (any regression target): the set "
                                         "model averaged with two models of the index features (analyser indices + "
                                         "distribution shape; default), or the set model alone.")] = True,
    index_inputs: Annotated[bool, typer.Option("--index-inputs/--cells-only", help="The set model's decoder also "
                                               "reads the index features (default), or its embedding of the cells "
                                               "and the covariates only.")] = True,
    folds: Annotated[Optional[int], typer.Option("--folds", help="Cross-validate in K folds (K ≥ 2): every patient "
                                                 "predicted by the pipeline refitted without its fold, paired "
                                                 "against the baseline on all; then the kept model trains on "
                                                 "every patient.")] = None,
    repeats: Annotated[int, typer.Option("--repeats", help="With --folds: rerun the K folds with R different "
                                         "splits and report the spread between them.")] = 1,
    group: Annotated[Optional[str], typer.Option("--group", help="With --folds: a sample-table column naming "
                                                 "the patient; samples of one patient stay in one fold.")] = None,
) -> None:
    """Train a set model; print test metrics beside the moment baseline and the bound."""
    if folds is None and (repeats != 1 or group is not None):
        fail("--repeats and --group go with --folds K")
    if folds is not None and (folds < 2 or repeats < 1):
        fail(f"--folds {folds}: at least 2" if folds < 2 else f"--repeats {repeats}: at least 1")
    if folds is not None and resume and out is None:
        fail("--resume with --folds: give the cross-validation run's directory with --out")
    with user_errors():
        from flowrbc.train import TrainConfig, train_cohort

        given = dict(model=model, depth=depth, width=width, norm=norm, residual=residual, inducing=inducing,
                     lean=lean, epochs=epochs, batch_size=batch_size, lr=lr,
                     weight_decay=weight_decay, targets=tuple(target) if target else None)
        if covariate:
            given["covariates"] = tuple(c for c in covariate if c.lower() != "none")
        config = TrainConfig(**{k: v for k, v in given.items() if v is not None}, device=device.value,
                             precision=precision.value, seed=seed, coverage=coverage, hybrid=hybrid,
                             index_inputs=index_inputs, read=read.value)
        if set_size is not None:
            config.set_size = None if set_size.strip().lower() == "all" else _count("--set-size", set_size)
        if resume and out is None:
            out = Path("runs/latest").resolve()
        data = _load_cohort(cohort, patients, cells)
        fresh_cohort = reference = None
        if cohort is None and fresh:
            from flowrbc.assess import fresh_synthetic

            with err_console.status(f"loading {fresh} fresh synthetic patients"):
                fresh_cohort, reference = fresh_synthetic(data, fresh, cells)
        if folds is not None:
            from flowrbc.cli._crossval import train_crossval

            return train_crossval(data, config, out, folds=folds, repeats=repeats, group=group, resume=resume,
                                  fresh=fresh_cohort, reference=reference)
        with progress() as bar:
            task = bar.add_task("training", total=config.epochs, status="")

            def report(p) -> None:
                if p.end:
                    shown = {k.removeprefix("val_"): v for k, v in p.metrics.items() if k != "score"}
                    status = f"loss {p.loss:.3f} " + " ".join(f"{k} {v:.3f}" for k, v in shown.items())
                    bar.update(task, completed=p.epoch, status=status)
                else:
                    bar.update(task, status=f"step {p.step}/{p.steps} loss {p.loss:.3f}")

            result = train_cohort(data, config, out, resume=resume, progress=report, fresh=fresh_cohort,
                                  reference=reference, log=lambda m: err_console.print(m, highlight=False))
        if result.metrics:
            from flowrbc.cli._results import print_comparison

            print_comparison(result.metrics)
            console.print(f"run: {result.run_dir}  (model.pt, metrics.json, plots)")


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="Checkpoint (model.pt).")],
    cohort: Annotated[Path, typer.Argument(help="Cohort .h5ad.")],
    split: Annotated[str, typer.Option("--split", help="test, val, train or all.")] = "test",
    format: FormatOpt = Format.table,
    seed: SeedOpt = 0,
) -> None:
    """Metrics of a checkpoint on a cohort's split."""
    with user_errors():
        from flowrbc.evaluate import evaluate_cohort
        from flowrbc.io.cohort import read_cohort

        result = evaluate_cohort(model, read_cohort(cohort), split=split, seed=seed)
        if format == Format.json:
            import json

            sys.stdout.write(json.dumps(result, indent=2) + "\n")
            return
        rows = [(t, k, v) for t, m in result["metrics"].items() for k, v in m.items()]
        if format == Format.csv:
            sys.stdout.write("target,metric,value\n" + "".join(f"{t},{k},{v}\n" for t, k, v in rows))
            return
        from rich.table import Table

        table = Table(title=f"{model} on {cohort} ({split}: {result['n']} samples)")
        for col in ("target", "metric", "value"):
            table.add_column(col)
        for t, k, v in rows:
            table.add_row(t, k, _fmt(v))
        console.print(table)
        if "crossval" in result:
            from flowrbc.cli._crossval import print_summary

            print_summary(result["crossval"])


@app.command()
def predict(
    files: Annotated[list[str], typer.Argument(help="FCS files, directories or globs.")],
    model: ModelOpt = DEFAULT_MODEL,
    format: FormatOpt = Format.table,
    coverage: CoverageOpt = None,
    all_cells: Annotated[bool, typer.Option("--all-cells", help="Stream every gated cell (slot_set models).")] = False,
    seed: SeedOpt = 0,
    channel: ChannelOpt = None,
    scale: ScaleOpt = None,
    dataset: DatasetOpt = 0,
    sex: SexOpt = None,
    age: AgeOpt = None,
    report: Annotated[Optional[Path], typer.Option("--report", help="Also write an HTML page + PNG per file "
                                                   "into this directory (as `flowrbc report`).")] = None,
    precision: Annotated[Optional[Precision], typer.Option("--precision", help="auto (as `flowrbc train "
                                                           "--precision auto` on this machine), bf16 or fp32; "
                                                           "default: the precision the model was validated "
                                                           "in.")] = None,
) -> None:
    """Hematocrit with interval, anemia probability and QC flags per file."""
    overrides = parse_channel_map(channel)
    scales = parse_scale_map(scale)
    covariates = covariate_values(sex, age)
    with user_errors():
        from flowrbc.checkpoint import resolve_model_path
        from flowrbc.errors import FlowrbcError
        from flowrbc.predict import expand_inputs, load_model, predict_file

        path = resolve_model_path(model)
        if not path.exists():
            if model == DEFAULT_MODEL:
                fail(f"no model at {DEFAULT_MODEL}: run `flowrbc train` first")
            fail(f"{model}: no such checkpoint")
        predictor = load_model(path, precision=None if precision is None else precision.value)
        paths = expand_inputs(files)
        if not paths:
            fail("no FCS files matched " + " ".join(files))
        results, failed = [], 0
        for p in paths:
            try:
                result = predict_file(predictor, p, overrides=overrides, coverage=coverage, all_cells=all_cells,
                                      seed=seed, covariates=covariates, scales=scales, dataset=dataset)
                if report is None:
                    result.cells = None  # a page needs them; a table row does not
                results.append(result)
            except (FlowrbcError, OSError) as exc:
                failed += 1
                msg = str(exc) if isinstance(exc, FlowrbcError) else f"{p}: {exc.strerror or exc}"
                err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
        _print_predictions([r.to_dict() for r in results], format)
        if report is not None and results:
            from flowrbc.report import write_patient_pages

            pages = write_patient_pages(predictor, results, report, seed=seed)
            err_console.print(f"wrote {len(pages)} report page(s) to {report}", highlight=False)
        if failed:
            raise typer.Exit(1)


def _print_predictions(rows: list[dict], format: Format) -> None:
    if format == Format.json:
        import json

        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    if format == Format.csv:
        import csv

        keys = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(sys.stdout, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ";".join(v) if isinstance(v, list) else ("" if v is None else v) for k, v in r.items()})
        return
    if not rows:
        return
    from rich.table import Table

    cov = next((r["hematocrit_coverage"] for r in rows if r.get("hematocrit_coverage") is not None), None)
    draws = sorted({str(r["draws"]) for r in rows})
    how = ("each prediction reads every gated cell, in one set" if draws == ["all"]
           else f"each prediction averages {'/'.join(draws)} disjoint random subsets")
    scaled = sorted({", ".join(f"{k.removeprefix('scale_')} ×{v:g}" for k, v in r.items() if k.startswith("scale_"))
                     for r in rows} - {""})
    how += "".join(f"; scaled: {s}" for s in scaled)
    table = Table(caption=how, caption_justify="left")
    with_cov = any("sex" in r or "age" in r for r in rows)
    table.add_column("file", overflow="fold")  # a long name wraps; numbers never shrink
    if with_cov:
        table.add_column("sex, age", no_wrap=True)
    hct_head = f"Hct % ({cov:.0%} interval)" if cov is not None else "Hct %"
    for col in (hct_head, "anemia (p)", "cells"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("QC")
    for r in rows:
        age = "?" if r.get("age") is None else f"{r['age']:g}"
        who = [f"{r.get('sex') or '?'}, {age}"] if with_cov else []
        hct = r.get("hematocrit")
        lo, hi = r.get("hematocrit_low"), r.get("hematocrit_high")
        p = r.get("anemia_probability")
        table.add_row(
            Path(r["file"]).name,
            *who,
            "-" if hct is None else f"{hct:.1f}" if lo is None or hi is None else f"{hct:.1f} ({lo:.1f}–{hi:.1f})",
            "-" if p is None else f"{'yes' if r.get('anemia') else 'no'} ({p:.2f})",
            str(r["cells_used"]),
            ", ".join(r["qc_flags"]) or "ok",
        )
    console.print(table)


@app.command()
def embed(
    model: Annotated[Path, typer.Argument(help="Checkpoint (model.pt).")],
    cohort: Annotated[Path, typer.Argument(help="Cohort .h5ad.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output .h5ad of patients.")] = Path("patients.h5ad"),
    seed: SeedOpt = 0,
) -> None:
    """Patient-level AnnData of set embeddings, with neighbors, UMAP and a PNG."""
    with user_errors():
        from flowrbc.embed import embed_cohort
        from flowrbc.io.cohort import read_cohort

        written = embed_cohort(model, read_cohort(cohort), out, seed=seed)
        console.print(f"wrote {written['h5ad']} and {written['png']}")
