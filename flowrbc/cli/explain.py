"""``flowrbc explain``: which cells drove each prediction (``flowrbc.explain``)."""

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
    progress,
    user_errors,
)
from flowrbc.cli.run import DEFAULT_MODEL, ModelOpt


@app.command()
def explain(
    inputs: Annotated[list[str], typer.Argument(help="FCS files, directories or globs; or one cohort .h5ad.")],
    model: ModelOpt = DEFAULT_MODEL,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output directory.")] = Path("explain"),
    target: Annotated[Optional[str], typer.Option("--target", help="The target the summary line and the cohort "
                                                  "map show (default: the model's first); the CSV has every "
                                                  "target's.")] = None,
    method: Annotated[str, typer.Option("--method", help="occlusion: each region's cells replaced by healthy "
                                        "stand-ins alone, what no region explains shared by all cells; shapley: "
                                        "Shapley values of the regions (3.3x slower; less faithful, measured).")
                      ] = "occlusion",
    regions: Annotated[int, typer.Option("--regions", min=1, help="Cell regions per sample (k-means).")] = 32,
    permutations: Annotated[int, typer.Option("--permutations", min=2, help="--method shapley: orderings of the "
                                              "regions (even: antithetic pairs).")] = 4,
    seed: SeedOpt = 0,
    channel: ChannelOpt = None,
    scale: ScaleOpt = None,
    dataset: DatasetOpt = 0,
    sex: SexOpt = None,
    age: AgeOpt = None,
) -> None:
    """Per-cell attributions: each gated cell's signed share of the prediction, against healthy cells.

    A file gives OUT/<stem>.cells.csv (one row per event, NaN outside the gate); a cohort
    .h5ad gives OUT/<stem>.explained.h5ad (obs["attribution_<target>"]) and OUT/<stem>.map.png.
    A sample's attributions add up to its prediction minus the prediction for healthy
    reference cells with the same covariates (README: "Which cells drove a prediction")."""
    if method not in ("occlusion", "shapley"):
        fail(f"--method {method!r}: use occlusion or shapley")
    if permutations % 2:
        fail(f"--permutations {permutations}: use an even number (orderings come in antithetic pairs)")
    overrides, scales, covariates = parse_channel_map(channel), parse_scale_map(scale), covariate_values(sex, age)
    with user_errors():
        from flowrbc.checkpoint import resolve_model_path
        from flowrbc.predict import expand_inputs, load_model

        path = resolve_model_path(model)
        if not path.exists():
            fail(f"no model at {DEFAULT_MODEL}: run `flowrbc train` first" if model == DEFAULT_MODEL
                 else f"{model}: no such checkpoint")
        predictor = load_model(path)
        name = target or next(iter(predictor.targets))
        if name not in predictor.targets:
            fail(f"--target {name!r}: the model predicts {', '.join(predictor.targets)}")
        if predictor.reference_cells is None:
            fail(f"{path}: the checkpoint has no reference cells to explain against (written before "
                 "`flowrbc explain` existed); train it again")
        if len(inputs) == 1 and inputs[0].lower().endswith(".h5ad"):
            if overrides or scales or dataset or sex or age is not None:
                fail("--channel, --scale, --dataset, --sex and --age apply to FCS files, not to a cohort")
            _cohort(predictor, Path(inputs[0]), out, name, dict(method=method, regions=regions,
                                                                permutations=permutations, seed=seed))
            return
        paths = expand_inputs(inputs)
        if not paths:
            fail("no FCS files matched " + " ".join(inputs))
        _files(predictor, paths, out, name, dict(overrides=overrides, scales=scales, covariates=covariates,
                                                  dataset=dataset, method=method, regions=regions,
                                                  permutations=permutations, seed=seed))


def _files(predictor, paths: list[Path], out: Path, name: str, options: dict) -> None:
    from flowrbc.errors import FlowrbcError
    from flowrbc.explain_io import cells_table, explain_file, region_sentence, write_bytes

    failed = 0
    for p in paths:
        try:
            result = explain_file(predictor, p, **options)
        except (FlowrbcError, OSError) as exc:
            failed += 1
            msg = str(exc) if isinstance(exc, FlowrbcError) else f"{p}: {exc.strerror or exc}"
            err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
            continue
        e = result.explanation
        unit = "log-odds" if predictor.targets[name]["kind"] == "binary" else "points"
        where = write_bytes(out / f"{p.stem}.cells.csv", cells_table(result))
        total = float(e.attributions[name].sum())
        label = f"{name} log-odds" if unit == "log-odds" else name
        console.print(f"[bold]{p.name}[/]: {label} {e.prediction[name]:.3g} against {e.reference[name]:.3g} for "
                      f"healthy reference cells; the {len(e.regions):,} gated cells add {total:+.3g} {unit}; "
                      + region_sentence(e, name, result.sample.roles, result.sample.cells), highlight=False)
        console.print(f"  wrote {where}", highlight=False)
    if failed:
        raise typer.Exit(1)


def _cohort(predictor, path: Path, out: Path, name: str, options: dict) -> None:
    import anndata
    import numpy as np

    from flowrbc.errors import CohortError
    from flowrbc.explain_io import cohort_map, explain_cohort, write_bytes
    from flowrbc.io.cohort import Cohort, sample_order

    try:
        adata = anndata.read_h5ad(path)
    except OSError as exc:
        fail(f"{path}: not a readable .h5ad ({exc})")
    cohort = Cohort.from_anndata(adata, source=str(path))
    with progress() as bar:
        task = bar.add_task(f"explaining {cohort.n_samples} samples", total=cohort.n_samples, status="")
        attr, region, predictions = explain_cohort(predictor, cohort, **options, progress=lambda i: bar.advance(task))
    # the cohort's cells are grouped by sample; obs keeps its own order
    order, _ = sample_order(adata.obs["sample_id"], cohort.samples.index.astype(str))  # obs row of each cohort cell
    for t, a in attr.items():
        col = np.full(adata.n_obs, np.nan)
        col[order] = a
        adata.obs[f"attribution_{t}"] = col
    col = np.full(adata.n_obs, -1, dtype=np.int64)
    col[order] = region
    adata.obs["explain_region"] = col
    out.mkdir(parents=True, exist_ok=True)
    target_h5 = out / f"{path.stem}.explained.h5ad"
    tmp = target_h5.with_name(f".{target_h5.name}.tmp")
    adata.write_h5ad(tmp)
    tmp.replace(target_h5)
    binary = [t for t, s in predictor.targets.items() if s["kind"] == "binary"]
    if not binary:
        raise CohortError(f"{path}: the model predicts no binary target to split the map by")
    anemic = np.asarray(predictions[binary[0]]) >= 0.5  # (n_samples,) predicted positive
    cols = predictor.cohort_columns(cohort)
    volume, hb = cohort.X[:, cols[0]].astype(np.float64), cohort.X[:, cols[1]].astype(np.float64)
    unit = "log-odds" if predictor.targets[name]["kind"] == "binary" else "points"
    png = cohort_map(volume, hb, attr[name], np.repeat(anemic, cohort.n_cells),
                     (f"predicted not {binary[0]}", f"predicted {binary[0]}"), f"{name} ({unit})")
    map_path = write_bytes(out / f"{path.stem}.map.png", png)
    console.print(f"wrote {target_h5} (obs: {', '.join(f'attribution_{t}' for t in attr)}, explain_region) "
                  f"and {map_path}", highlight=False)
