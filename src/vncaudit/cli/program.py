"""The program: the typer `app`, its top-level callback (--version), the `version` command, the
console script entry point `main` (docs/design.md §5 exit codes: 0 ok, 1 findings at or above
--fail-on, 2 usage/input error, 3 runtime failure, every error one line on stderr) and the
table of the command modules of this package (`COMMAND_MODULES`), whose order is the order of
`vncaudit --help`.

A command module imports `app` from here to register its commands; this module imports the
command modules by name only, when their commands are first needed: `vncaudit scan …` imports
the scan command's code and no other command's (start-up is time before the first packet);
the help, an unknown command or the `app` used directly import them all. Must not: hold
scanning, grading or formatting logic of its own, or command code (each command lives in its
own module).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
import threading
from typing import Annotated, Any

import typer
from typer.models import CommandInfo

from vncaudit import __version__
from vncaudit.cli.common import OneLineErrors, error_line, log
from vncaudit.exceptions import VncAuditError

# The modules that define commands and their commands, in the order of `vncaudit --help`.
# A new command module goes here (tests/test_cli_startup.py checks the table is complete).
COMMAND_MODULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("vncaudit.cli.scan", ("scan",)),
    ("vncaudit.cli.subdomains", ("subdomains",)),
    ("vncaudit.cli.history", ("results", "diff")),
    ("vncaudit.cli.watch", ("watch", "alerts", "prune")),
    ("vncaudit.cli.schema", ("schema",)),
    ("vncaudit.cli.program", ("version",)),
    ("vncaudit.cli.local", ("local", "harden", "check")),
    ("vncaudit.cli.serve", ("serve",)),
    ("vncaudit.cli.manpage", ("manpage",)),
)
_ORDER = {name: i for i, (_, names) in enumerate(COMMAND_MODULES) for name in names}


class _CommandsOnDemand(typer.Typer):
    """The app: its command modules are imported when typer first reads the command list, in
    `COMMAND_MODULES` order; with `only` set (by `main`, for one run), just that command's."""

    only: str | None = None

    def __init__(self, **kwargs: Any) -> None:
        self._commands: list[CommandInfo] = []
        self._loading = False
        self._loaded: set[str] = set()
        super().__init__(**kwargs)

    @property
    def registered_commands(self) -> list[CommandInfo]:
        if not self._loading:
            self._load()
            # (also when a module was imported directly, its commands appended last)
            self._commands.sort(key=lambda info: _ORDER.get(_name(info), len(_ORDER)))
        return self._commands

    @registered_commands.setter
    def registered_commands(self, value: list[CommandInfo]) -> None:
        self._commands = value

    def _load(self) -> None:
        wanted = [module for module, names in COMMAND_MODULES
                  if (self.only is None or self.only in names) and module not in self._loaded]
        if not wanted:
            return
        self._loading = True
        try:
            for module in wanted:
                self._loaded.add(module)
                if module == __name__:
                    self.command()(version)
                else:
                    importlib.import_module(module)
        finally:
            self._loading = False


def _name(info: CommandInfo) -> str:
    """A registered command's name, as typer derives it when none is given."""
    callback = info.callback
    return info.name or (callback.__name__.replace("_", "-") if callback else "")


app: _CommandsOnDemand = _CommandsOnDemand(
    cls=OneLineErrors,
    name="vncaudit",
    context_settings={"help_option_names": ["-h", "--help"]},  # -h, as nmap users type it
    epilog="""Examples:

  vncaudit scan 10.0.0.0/24    VNC on the default ports of a subnet
  vncaudit local               this machine's VNC listeners and firewall
  vncaudit COMMAND --help      every option of a command, with examples

Exit codes: 0 ok, 1 a finding at or above --fail-on, 2 usage or input error (one line on
stderr), 3 runtime failure, 130 interrupted.""",
    help="Find exposed VNC services, read what each offers through the RFB handshake without "
    "logging in, grade the risk and show the fix. Scans only the targets you name.",
    no_args_is_help=True,
    # Plain help: rich's boxed three-column layout left the help text some 20 characters
    # wide at 80 columns; click's two columns read like nmap's and man pages.
    rich_markup_mode=None,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, pwsh)
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"vncaudit {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[
        bool, typer.Option("--version", is_eager=True, callback=_print_version,
                           help="Print the version and exit.")
    ] = False,
) -> None:
    # `vncaudit --version`, as with nmap and most tools; `vncaudit version` says the same.
    pass


def version() -> None:
    """Print the version."""
    typer.echo(f"vncaudit {__version__}")


def run() -> None:
    """The process's entry (the console script, `python -m vncaudit`): `main`, then the exit
    without the interpreter's teardown (`exit_now`). A program that calls `main` itself gets
    its SystemExit back instead."""
    # The SYN sender builds packets with numpy and never multiplies matrices: OpenBLAS's
    # thread pool would only cost its start-up (~0.1 s of CPU on 2 cores) before the first
    # SYN. Set here, for this process only, not for a program that imports the library.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        main()
    except SystemExit as done:
        exit_now(done)
        raise


def exit_now(done: SystemExit) -> None:
    """End the process with `done`'s exit code, without the interpreter's teardown of every
    module and object: with numpy, SQLite and rich loaded that is 0.1-0.2 s after the work
    is over (a scan's report written, its store closed). What an exit must still do is done
    first: the atexit handlers (logging's flush among them) and stdout and stderr flushed.
    Returns, and the normal exit follows, when something else is left to wait for: a thread
    that is not a daemon, an exit code that is not a number, a stream that cannot be
    flushed."""
    code = done.code
    if code is not None and not isinstance(code, int):
        return
    if any(not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: the normal exit reports it its way
        return
    atexit._run_exitfuncs()
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code or 0)


def _named_command(args: list[str]) -> str | None:
    """The command a command line names first thing (`vncaudit scan …`), if any; None when
    every command may be needed (the help, completion, global options, a typo)."""
    if not args or args[0] not in _ORDER:
        return None
    if any(key.startswith("_VNCAUDIT_COMPLETE") for key in os.environ):
        return None
    return args[0]


def main() -> None:
    """The command line: map any escaping error to one line and exit code 3 (SystemExit
    carries the code)."""
    app.only = _named_command(sys.argv[1:])
    try:
        # The name in usage lines and in the shell completion script, also under
        # `python -m vncaudit` (whose completion would otherwise be bound to "python -m ...").
        app(prog_name="vncaudit")
    except VncAuditError as exc:
        error_line(str(exc))
        sys.exit(3)
    except MemoryError:
        error_line("out of memory (an input file or a target range too large for this "
                    "machine?)")
        sys.exit(3)
    except Exception as exc:  # a bug: one line for the user, the traceback for -vv
        log.debug("unexpected error", exc_info=True)
        error_line(f"internal error: {type(exc).__name__}: {exc} (run with -vv for details)")
        sys.exit(3)
    finally:
        app.only = None
