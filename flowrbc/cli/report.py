"""``flowrbc report``: HTML pages (and PNG figures) for FCS files or a cohort overview."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from flowrbc.cli._app import app
from flowrbc.cli._common import (
    AgeOpt,
    ChannelOpt,
    DatasetOpt,
    ScaleOpt,
    SeedOpt,
    SexOpt,
    console,
    covariate_values,
    err_console,
    fail,
    parse_channel_map,
    parse_scale_map,
    user_errors,
)
from flowrbc.cli.run import DEFAULT_MODEL, CoverageOpt, ModelOpt


def _load(model: Path):
    from flowrbc.checkpoint import resolve_model_path
    from flowrbc.predict import load_model

    path = resolve_model_path(model)
    if not path.exists():
        fail(f"no model at {DEFAULT_MODEL}: run `flowrbc train` first" if model == DEFAULT_MODEL
             else f"{model}: no such checkpoint")
    return load_model(path)


@app.command()
def report(
    inputs: Annotated[list[str], typer.Argument(help="FCS files, directories or globs; or one cohort .h5ad.")],
    model: ModelOpt = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("report"),
    seed: SeedOpt = 0,
    coverage: CoverageOpt = None,
    channel: ChannelOpt = None,
    scale: ScaleOpt = None,
    dataset: DatasetOpt = 0,
    sex: SexOpt = None,
    age: AgeOpt = None,
    rbc_count: Annotated[Optional[float], typer.Option("--rbc-count", help="Measured RBC count (10^12/L), for "
                                                       "the Mentzer index.")] = None,
    split: Annotated[str, typer.Option("--split", help="Cohort overview: test, val, train or all.")] = "test",
    pages: Annotated[Optional[int], typer.Option("--pages", help="Cohort overview: per-patient pages for the "
                                                 "first N samples (default: all).")] = None,
) -> None:
    """One self-contained HTML page + PNG per file (research use only), or a cohort overview."""
    overrides = parse_channel_map(channel)
    scales = parse_scale_map(scale)
    covariates = covariate_values(sex, age)
    if rbc_count is not None and not 0 < rbc_count < 20:
        fail(f"--rbc-count {rbc_count:g}: not an RBC count in 10^12/L")
    if pages is not None and pages < 0:
        fail(f"--pages {pages}: must be 0 or more")
    cohorts = [i for i in inputs if i.lower().endswith(".h5ad")]
    if cohorts and len(inputs) > 1:
        fail(f"{cohorts[0]}: a cohort report takes one .h5ad and nothing else")
    with user_errors():
        predictor = _load(model)
        if cohorts:
            from flowrbc.io.cohort import read_cohort
            from flowrbc.report import report_cohort

            with err_console.status("rendering the cohort report"):
                result = report_cohort(predictor, read_cohort(cohorts[0]), out, split=split, seed=seed, pages=pages)
            console.print(f"wrote {result.index} and {len(result.pages)} patient pages", highlight=False)
            return
        from flowrbc.predict import expand_inputs
        from flowrbc.report import report_files

        paths = expand_inputs(inputs)
        if not paths:
            fail("no FCS files matched " + " ".join(inputs))
        result = report_files(predictor, paths, out, overrides=overrides, coverage=coverage, seed=seed,
                              covariates=covariates, rbc_count=rbc_count, scales=scales, dataset=dataset,
                              on_page=lambda p: console.print(f"wrote {p}", highlight=False))
        for _, message in result.failed:
            err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        if result.failed:
            raise typer.Exit(1)
