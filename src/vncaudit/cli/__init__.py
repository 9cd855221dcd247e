"""Command line: `vncaudit scan …` and friends. Thin: parse, call the library, render.

Owns: the typer `app`, its top-level callback (--version), the `version` command, the console
script entry point `main` (DESIGN.md §5 exit codes: 0 ok, 1 findings at or above --fail-on,
2 usage/input error, 3 runtime failure, every error one line on stderr) and the registration
of the command modules of this package, whose import order is the order of `vncaudit --help`.
Re-exports the shared helpers (`cli/common.py`, `cli/output.py`, `cli/scan.py`) under their
old names, so `from vncaudit.cli import _fail, app, results_table ...` keeps working. Must
not: hold scanning, grading or formatting logic of its own, or command code (each command
lives in its own module).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from vncaudit import __version__
from vncaudit.cli.common import (
    OUTPUTS,
    AllOpt,
    DbOpt,
    FixOpt,
    OutputFileOpt,
    OutputOpt,
    TrustedOpt,
    _check_not_everyone,
    _check_output_file,
    _check_trusted,
    _error_line,
    _fail,
    _now,
    _OneLineErrors,
    _open_store,
    _setup_logging,
    _write_out,
    err,
    finite,
    log,
)
from vncaudit.cli.output import (
    _EVIDENCE_SHOWN,
    _SEVERITY_STYLE,
    _WHY_SHOWN,
    _cell,
    _emit,
    _host_key,
    _plain,
    _security_summary,
    print_findings,
    results_table,
)
from vncaudit.exceptions import VncAuditError

# What other modules and the tests import from `vncaudit.cli` (explicit for mypy --strict).
__all__ = [
    "OUTPUTS",
    "AllOpt",
    "DbOpt",
    "FixOpt",
    "OutputFileOpt",
    "OutputOpt",
    "TrustedOpt",
    "_check_not_everyone",
    "_check_output_file",
    "_check_trusted",
    "_error_line",
    "_fail",
    "_now",
    "_OneLineErrors",
    "_open_store",
    "_setup_logging",
    "_write_out",
    "err",
    "finite",
    "log",
    "_EVIDENCE_SHOWN",
    "_SEVERITY_STYLE",
    "_WHY_SHOWN",
    "_cell",
    "_emit",
    "_host_key",
    "_plain",
    "_security_summary",
    "print_findings",
    "results_table",
    "DEFAULT_PORTS_SPEC",
    "_MAX_STREAM_INPUT",
    "_MAX_WORDLIST_LINE",
    "_SCAN_EXAMPLES",
    "_active_options",
    "_check_discovery",
    "_domain_targets",
    "_kept_input",
    "_plain_target_name",
    "_post_probe",
    "_progress_bar",
    "_read_password_list",
    "_run_sharded",
    "_run_with_progress",
    "_sigterm_as_interrupt",
    "_space_from_spec",
    "app",
    "main",
]

app: typer.Typer = typer.Typer(
    cls=_OneLineErrors,
    name="vncaudit",
    context_settings={"help_option_names": ["-h", "--help"]},  # -h, as nmap users type it
    epilog="""Examples:

  vncaudit scan 10.0.0.0/24                   VNC on the default ports of a subnet
  vncaudit local                              this machine's VNC listeners and firewall
  vncaudit COMMAND --help                     every option of a command, with examples

Exit codes: 0 ok, 1 a finding at or above --fail-on, 2 usage or input error (one line on
stderr), 3 runtime failure, 130 interrupted.""",
    help="Find exposed VNC services, read what each offers through the RFB handshake without "
    "logging in, grade the risk and show the fix. Scans only the targets you name.",
    no_args_is_help=True,
    add_completion=False,
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


# Commands that live in their own modules register themselves on `app` when imported; the
# order of these imports is the order of `vncaudit --help` (scan ... diff, then version).
from vncaudit.cli import scan as _scan  # noqa: E402,F401,I001
from vncaudit.cli import subdomains as _subdomains  # noqa: E402,F401
from vncaudit.cli import history as _history  # noqa: E402,F401
from vncaudit.cli import watch as _watch  # noqa: E402,F401
from vncaudit.cli import schema as _schema  # noqa: E402,F401
from vncaudit.cli.scan import DEFAULT_PORTS_SPEC, _SCAN_EXAMPLES  # noqa: E402
from vncaudit.cli.scan_inputs import (  # noqa: E402
    _MAX_STREAM_INPUT,
    _MAX_WORDLIST_LINE,
    _active_options,
    _check_discovery,
    _domain_targets,
    _kept_input,
    _plain_target_name,
    _post_probe,
    _read_password_list,
    _space_from_spec,
)
from vncaudit.cli.scan_run import (  # noqa: E402
    _progress_bar,
    _run_sharded,
    _run_with_progress,
    _sigterm_as_interrupt,
)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(f"vncaudit {__version__}")


def main() -> None:
    """Console-script entry point: map any escaping error to one line and exit code 3."""
    try:
        app()
    except VncAuditError as exc:
        _error_line(str(exc))
        sys.exit(3)
    except MemoryError:
        _error_line("out of memory (an input file or a target range too large for this "
                    "machine?)")
        sys.exit(3)
    except Exception as exc:  # a bug: one line for the user, the traceback for -vv
        log.debug("unexpected error", exc_info=True)
        _error_line(f"internal error: {type(exc).__name__}: {exc} (run with -vv for details)")
        sys.exit(3)


# Commands that live in their own modules register themselves on `app` when imported.
# (Each module imports `app` and the shared helpers above from this package.)
from vncaudit.cli import local as _local  # noqa: E402,F401
from vncaudit.cli import serve as _serve  # noqa: E402,F401
