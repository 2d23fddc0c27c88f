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


def _register() -> None:
    # Each module adds its commands to ``app``; they import the library lazily.
    import importlib

    for name in ("fcs", "data", "run", "validate"):
        try:
            importlib.import_module(f"flowrbc.cli.{name}")
        except ModuleNotFoundError as exc:  # an area not built yet
            if exc.name != f"flowrbc.cli.{name}":
                raise


_register()


def main() -> None:
    app()
