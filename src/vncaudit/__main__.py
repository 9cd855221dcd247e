"""`python -m vncaudit` runs the command line."""

from vncaudit.cli import run

run()
