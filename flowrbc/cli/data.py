"""Data commands: ``simulate``, ``ingest``, ``import-flowrbc``. Thin: the library does the work."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowrbc.cli._app import app
from flowrbc.cli._common import (
    ChannelOpt,
    DatasetOpt,
    OutOpt,
    ScaleOpt,
    SeedOpt,
    console,
    err_console,
    parse_channel_map,
    parse_scale_map,
    progress,
    user_errors,
)

_HEADERS = {"hematocrit": "Hct", "hemoglobin": "Hb", "rbc_count": "RBC", "mcv": "MCV",
            "mch": "MCH", "rdw": "RDW", "anemia_rate": "anemia"}
_TWO_DECIMALS = {"share", "anemia_rate", "rbc_count"}


def _print_table(df, title: str) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column(df.index.name or "", no_wrap=True)
    for c in df.columns:
        table.add_column(_HEADERS.get(str(c), str(c)), justify="right", no_wrap=True)
    digits = [2 if c in _TWO_DECIMALS else 1 for c in df.columns]
    for idx, *row in df.itertuples():
        table.add_row(str(idx), *[f"{v:.{d}f}" if isinstance(v, float) else str(v) for v, d in zip(row, digits)])
    console.print(table)


@app.command()
def simulate(
    out: Annotated[Path, typer.Argument(help="Folder for the FCS files and clinical.csv.")],
    patients: Annotated[int, typer.Option("--patients", "-n", min=1, help="Number of patients.")] = 2000,
    cells: Annotated[int, typer.Option("--cells", "-m", min=1, help="Cells per patient.")] = 1000,
    seed: SeedOpt = 0,
) -> None:
    """Write a synthetic cohort: one FCS file per patient and clinical.csv (same seed, same bytes)."""
    with user_errors():
        import pandas as pd

        from flowrbc.synthetic.simulate import simulate_cohort, summary_table, write_simulated

        with progress() as bar:
            task = bar.add_task("writing FCS", total=patients, status="")
            clinical = write_simulated(out, patients, cells, seed,
                                       on_file=lambda i, p: bar.update(task, advance=1, status=p.name))
        samples = pd.read_csv(clinical)
        _print_table(summary_table(samples), f"{patients} patients x {cells} cells, seed {seed}")
        bound = simulate_cohort(patients, 1, seed=seed).bound  # the bound does not depend on cells
        console.print(
            f"bound (best possible from infinitely many cells of each patient, sex and age): hematocrit MSE "
            f"{bound['bound_hematocrit_mse']:.2f}, anemia accuracy {bound['bound_anemia_accuracy']:.3f} (an oracle "
            f"knowing every latent: MSE {bound['latent_hematocrit_mse']:.2f}, not attainable from cells). "
            f"{cells:,} cells per patient reveal less; `flowrbc train` prints what the moments baseline reaches "
            f"from them beside the bound",
            highlight=False,
        )
        console.print(f"wrote {patients} FCS files and {clinical}", highlight=False)


@app.command()
def ingest(
    directory: Annotated[Path, typer.Argument(help="Folder of FCS files.")],
    clinical: Annotated[Path, typer.Option("--clinical", "-c", help="Clinical table (CSV) with sample_id and/or file.")],
    out: OutOpt = Path("cohort.h5ad"),
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first unusable file.")] = False,
    channel: ChannelOpt = None,
    scale: ScaleOpt = None,
    scale_from_clinical: Annotated[bool, typer.Option(
        "--scale-from-clinical", help="Derive each file's volume / hemoglobin factors from the clinical table's "
        "mcv / mch columns (the gated cells' mean volume = MCV, mean content = MCH); stored per sample.")] = False,
    seed: SeedOpt = 0,
    dataset: DatasetOpt = 0,
) -> None:
    """Build a cohort (.h5ad) from FCS files: resolve channels, gate, QC, match clinical rows, split."""
    overrides = parse_channel_map(channel)
    scales = parse_scale_map(scale)
    with user_errors():
        from flowrbc.io.cohort import write_cohort
        from flowrbc.io.ingest import ingest_fcs
        from flowrbc.io.sample import FCS_SUFFIXES

        n_files = sum(1 for p in directory.iterdir() if p.suffix.lower() in FCS_SUFFIXES) if directory.is_dir() else 0
        with progress() as bar:
            task = bar.add_task("ingesting", total=n_files, status="")

            def on_file(path: Path, problem: str | None) -> None:
                if problem:
                    bar.console.print(f"[yellow]skipped:[/] {problem}", highlight=False, soft_wrap=True)
                bar.update(task, advance=1, status=path.name)

            result = ingest_fcs(directory, clinical, channels=overrides or None, strict=strict, seed=seed,
                                on_file=on_file, scales=scales, scale_from_clinical=scale_from_clinical,
                                dataset=dataset)
        write_cohort(result.cohort, out)
    c = result.cohort
    s = c.samples
    splits = ", ".join(f"{k} {int((s['split'] == k).sum())}" for k in ("train", "val", "test"))
    console.print(
        f"{out}: {c.n_samples} samples, {len(c.X):,} cells ({splits}); "
        f"{len(result.skipped)} files skipped, {len(result.unmatched_rows)} clinical rows without a file; "
        f"{int(s['flag_too_few_cells'].sum())} samples with too few cells",
        highlight=False,
    )
    for role, f in result.scales.items():
        how = f"{f['mean']:g} for every file" if f["source"] == "given" else (
            f"mean {f['mean']:.4g}, CV {f['cv_percent']:.1f} %, {f['min']:.4g} to {f['max']:.4g} over {f['files']} files")
        console.print(f"{role} scale ({f['source']}): {how}; stored in the samples column scale_{role}",
                      highlight=False)


@app.command("import-flowrbc")
def import_flowrbc(
    file: Annotated[Path, typer.Argument(help="Flow-RBC HDF5 (train_data, train_labels, test_data, test_labels).")],
    out: OutOpt = Path("cohort.h5ad"),
    max_samples: Annotated[int | None, typer.Option("--max-samples", min=1, help="At most this many samples from each of train and test.")] = None,
    seed: SeedOpt = 0,
) -> None:
    """Convert the published Flow-RBC HDF5 layout to a cohort (.h5ad); 10 % of train becomes val."""
    with user_errors():
        from flowrbc.io.cohort import write_cohort
        from flowrbc.io.flowrbc_h5 import import_flowrbc_h5

        with progress() as bar:
            task = bar.add_task("importing", total=None, status="")
            cohort = import_flowrbc_h5(file, max_samples=max_samples, seed=seed,
                                       on_chunk=lambda done, total: bar.update(task, completed=done, total=total))
        write_cohort(cohort, out)
    s = cohort.samples
    splits = ", ".join(f"{k} {int((s['split'] == k).sum())}" for k in ("train", "val", "test"))
    console.print(f"{out}: {cohort.n_samples} samples, {len(cohort.X):,} cells ({splits})", highlight=False)
    flagged = int(s["flag_many_gated_out"].sum())
    if flagged:
        err_console.print(f"[yellow]warning:[/] {flagged} samples have > 20 % of cells outside the RBC gate "
                          "(check that volume is in fL and hemoglobin in pg)", highlight=False)
