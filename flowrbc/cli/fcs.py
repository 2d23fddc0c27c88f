"""``flowrbc info``: what an FCS file holds (channels, events, keywords, QC, channel units)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flowrbc.cli._app import app
from flowrbc.cli._common import (
    ChannelOpt,
    DatasetOpt,
    ScaleOpt,
    console,
    parse_channel_map,
    parse_scale_map,
    user_errors,
)
from flowrbc.cli._format import number

_COLUMNS = ("#", "name", "label", "range", "bits", "ampl.", "gain", "min", "median", "max")
_TEXT_COLUMNS = ("name", "label", "ampl.")


@app.command()
def info(
    file: Annotated[Path, typer.Argument(help="An FCS file (2.0, 3.0 or 3.1).")],
    json_out: Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")] = False,
    dataset: DatasetOpt = 0,
    channel: ChannelOpt = None,
    scale: ScaleOpt = None,
) -> None:
    """Show an FCS file's channels, events, instrument, data sets, warnings and simple QC."""
    import json
    import warnings

    from flowrbc.io.fcs import FCSWarning, describe_fcs, read_fcs_data

    overrides, scales = parse_channel_map(channel), parse_scale_map(scale)
    with user_errors():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FCSWarning)  # reported below instead
            summary = describe_fcs(read_fcs_data(file, dataset=dataset), overrides, scales)

    if json_out:
        typer.echo(json.dumps(summary, indent=2))
        return

    from rich import box
    from rich.table import Table

    s = summary
    # Text columns fold; numbers never do, and fit 80 columns (see flowrbc.cli._format).
    table = Table(title=f"{file.name} — data set {s['dataset'] + 1} of {s['n_datasets']}",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    for col in _COLUMNS:
        text = col in _TEXT_COLUMNS
        table.add_column(col, justify="left" if text else "right", overflow="fold", no_wrap=not text)
    for i, c in enumerate(s["channels"], start=1):
        table.add_row(str(i), c["name"], c["label"] or "", number(c["range"]), str(c["bits"]),
                      c["amplification"], number(c["gain"]), number(c["min"]), number(c["median"]),
                      number(c["max"]))
    console.print(table)
    console.print(f"events: {s['events']:,}   FCS {s['fcs_version']}   data type {s['datatype']}   "
                  f"instrument: {s['instrument'] or '-'}", highlight=False)
    if s["n_datasets"] > 1:
        console.print(f"data sets: {_datasets(s['datasets'], s['dataset'])}", highlight=False)
    console.print(f"events with NaN/inf: {s['events_with_non_finite']:,}   RBC roles: {_roles(s['units'])}",
                  highlight=False)
    for w in s["warnings"] + [u["problem"] for u in (s["units"] or {}).values() if u["problem"]]:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)


def _datasets(datasets: list[dict], shown: int) -> str:
    """``--dataset 0: FCS 2.0, 27,072 events, 4 parameters (shown); --dataset 1: ...``."""
    def count(v: int | None) -> str:
        return "?" if v is None else f"{v:,}"

    return "; ".join(f"--dataset {d['dataset']}: FCS {d['version']}, {count(d['events'])} events, "
                     f"{count(d['parameters'])} parameters" + (" (shown)" if d["dataset"] == shown else "")
                     for d in datasets)


def _roles(units: dict | None) -> str:
    """``volume = FSC-A ×0.0009 (median 81.3 fL), ...``, or "not found"."""
    if not units:
        return "not found"
    parts = []
    for role, u in units.items():
        scaled = "" if u["scale"] == 1.0 else f" ×{u['scale']:g}"
        unit = "" if u["problem"] else f" {u['unit']}"  # an uncalibrated channel has no unit
        parts.append(f"{role} = {u['channel']}{scaled} (median {number(u['median'])}{unit})")
    return ", ".join(parts)
