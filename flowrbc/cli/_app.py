"""The ``flowrbc`` typer app, in its own module so the command modules can register on it
without importing the ``flowrbc.cli`` package that imports them."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="flowrbc",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="Clinical prediction (hematocrit, anemia) from single-cell RBC measurements in FCS files.",
)
