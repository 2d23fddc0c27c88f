"""The ``flowrbc`` command line: a thin typer app; each area registers its commands.

Importing the command modules registers their commands on ``app``; they import the library lazily.
"""

from __future__ import annotations

from flowrbc.cli import data, explain, fcs, report, run, validate  # noqa: F401
from flowrbc.cli._app import app


def main() -> None:
    app()
