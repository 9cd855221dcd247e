"""Command line: `vncaudit scan …` and friends. Thin: parse, call the library, render.

The package: `program` (the typer app, the command table, the entry point), `common` (errors,
shared options and checks), `output` (tables and reports on the terminal), `live` (results
written as they come), `coercion` (option converters), and one module per command group.
This module names what the console script and `python -m vncaudit` run (`run`: `main`, then
the process's exit), the command line for a caller of its own (`main`) and the app (`app`);
importing it imports no command. Must not: hold code of its own.
"""

from vncaudit.cli.program import app, main, run

__all__ = ["app", "main", "run"]
