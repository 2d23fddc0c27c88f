"""``flowrbc info``: what an FCS file holds (channels, events, keywords, QC)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowrbc.cli import app
from flowrbc.cli._common import console, user_errors


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.5g}"
    return str(v)


@app.command()
def info(
    file: Annotated[Path, typer.Argument(help="An FCS file (2.0, 3.0 or 3.1).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    dataset: Annotated[int, typer.Option("--dataset", help="Data set to read (0 = first).")] = 0,
) -> None:
    """Show an FCS file's channels, events, instrument, data sets, warnings and simple QC."""
    import json
    import warnings

    from flowrbc.io.fcs import FCSWarning, describe_fcs, read_fcs_data

    with user_errors():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FCSWarning)  # reported below instead
            summary = describe_fcs(read_fcs_data(file, dataset=dataset))

    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return

    from rich.table import Table

    s = summary
    table = Table(title=f"{file.name} — data set {s['dataset'] + 1} of {s['n_datasets']}")
    for col in ("#", "name", "label", "range", "bits", "ampl.", "gain", "min", "median", "max"):
        table.add_column(col, justify="right" if col not in ("name", "label", "ampl.") else "left")
    for i, c in enumerate(s["channels"], start=1):
        table.add_row(str(i), c["name"], c["label"] or "", _fmt(c["range"]), str(c["bits"]),
                      c["amplification"], _fmt(c["gain"]), _fmt(c["min"]), _fmt(c["median"]),
                      _fmt(c["max"]))
    console.print(table)
    roles = ", ".join(f"{r} = {n}" for r, n in s["roles"].items()) if s["roles"] else "not found"
    console.print(f"events: {s['events']:,}   FCS {s['fcs_version']}   data type {s['datatype']}   "
                  f"instrument: {s['instrument'] or '-'}", highlight=False)
    console.print(f"events with NaN/inf: {s['events_with_non_finite']:,}   RBC roles: {roles}",
                  highlight=False)
    for w in s["warnings"]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
