"""The ``flowrbc`` command line: a thin typer app; each area registers its commands."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="flowrbc",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Clinical prediction (hematocrit, anemia) from single-cell RBC measurements in FCS files.",
)


# Each module registers its commands on ``app``; they import the library lazily.
from flowrbc.cli import data, fcs, report, run, validate  # noqa: E402,F401


def main() -> None:
    app()
