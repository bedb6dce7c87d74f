"""``python -m qkdnet`` runs the command line."""

from qkdnet.cli import run

run()
