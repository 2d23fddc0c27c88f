"""``python -m flowrbc`` runs the command line."""

from flowrbc.cli import main

main()
