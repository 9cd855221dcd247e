"""Command line: `vncaudit scan …` and friends. Thin: parse, call the library, render.

The package: `launch` (the process's entry, `run`: a SYN scan's first packets before the
program loads), `program` (the typer app, the command table, `main`), `common` (errors, shared
options and checks), `output` (tables and reports on the terminal), `live` (results written as
they come), `coercion` (option converters), and one module per command group. This module names
what the console script and `python -m vncaudit` run (`run`), the command line for a caller of
its own (`main`) and the app (`app`); importing it imports neither typer nor any command
(`app` and `main` are looked up in `program` when first used). Must not: hold code of its own.
"""

from __future__ import annotations

from vncaudit.cli.launch import run

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vncaudit.cli.program import app, main

__all__ = ["app", "main", "run"]


def __getattr__(name: str) -> object:
    if name in ("app", "main"):
        from vncaudit.cli import program

        return getattr(program, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
