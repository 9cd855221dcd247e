"""What `vncaudit scan` does before its first packet, kept short without changing anything a
user sees: only the scan command's module is imported for a scan, nothing that only an answer
needs (the probe, the RFB parser, the result types, grading, the report) is imported before the
first packet leaves, the command table names every command, the help is the same however the
app was loaded, and the plain option converters (vncaudit.cli.coercion) give typer's own values
and error messages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from vncaudit.cli import program

SRC = str(Path(program.__file__).resolve().parents[2])


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          check=False, env={**os.environ, "PYTHONPATH": SRC, "COLUMNS": "80",
                                            **(env or {})})


def test_the_command_table_names_every_command_in_help_order() -> None:
    group = typer.main.get_command(program.app)
    listed = [name for _, names in program.COMMAND_MODULES for name in names]
    assert list(group.commands) == listed  # type: ignore[attr-defined]
    for module, names in program.COMMAND_MODULES:
        for name in names:
            callback = group.commands[name].callback  # type: ignore[attr-defined]
            assert callback.__module__ == module, name


def test_a_scan_imports_no_other_command_and_no_pydantic(tmp_path: Path) -> None:
    """`vncaudit scan` (a closed loopback port) imports the scan command's code only: not the
    other commands, the web service, the host audit, the active checks (none asked for), or
    pydantic (typer's per-option models)."""
    args = ["vncaudit", "scan", "127.0.0.1", "-p", "1", "--timeout", "1", "--db",
            str(tmp_path / "s.db")]
    out = _run("-c", "import contextlib, sys; sys.argv = " + repr(args) + "\n"
               "from vncaudit.cli import main\n"
               "with contextlib.suppress(SystemExit):\n"
               "    main()\n"
               "sys.stderr.write('MODULES ' + ' '.join(sys.modules))")
    assert "MODULES" in out.stderr, out.stderr
    imported = set(out.stderr.split("MODULES ")[1].split())
    assert "vncaudit.cli.scan" in imported and "vncaudit.engine" in imported
    for module in ("vncaudit.cli.local", "vncaudit.cli.serve", "vncaudit.cli.watch",
                   "vncaudit.cli.history", "vncaudit.harden", "vncaudit.web", "vncaudit.active",
                   "pydantic"):
        assert module not in imported, module


# What the first packet does not need: the probe and what it parses and builds (the RFB parser,
# the result dataclasses and their payloads), grading, the diff, the report writers and rich.
# They are imported while the sweep waits for answers.
NOT_BEFORE_FIRST_PACKET = (
    "vncaudit.models", "vncaudit.payloads", "vncaudit.rfb", "vncaudit.probe", "vncaudit.pump",
    "vncaudit.assess", "vncaudit.fingerprint", "vncaudit.diff", "vncaudit.remedies",
    "vncaudit.cli.output", "vncaudit.active", "vncaudit.websocket", "rich", "orjson",
    "pydantic",
)

# Runs `vncaudit ARGS`; at the first TCP connect (connect discovery), or at the first SYN (syn
# discovery: the early start's first `sendto` on a raw socket, or the sweep's look-up of sendmmsg,
# its first batch following), writes the modules imported so far.
_AT_FIRST_PACKET = """
import contextlib, runpy, socket, sys
seen = []
def hook(event, args):
    if seen or not (event == "ctypes.dlsym" or (event == "socket.connect"
                                                and args[0].type == socket.SOCK_STREAM)
                    or (event == "socket.sendto" and args[0].type == socket.SOCK_RAW)):
        return
    seen.append(event)
    sys.stderr.write("FIRST " + event + " MODULES " + " ".join(sorted(sys.modules)) + "\\n")
sys.addaudithook(hook)
sys.argv = ["vncaudit", *sys.argv[1:]]
with contextlib.suppress(SystemExit):
    runpy.run_module("vncaudit", run_name="__main__")
"""


def _modules_at_first_packet(tmp_path: Path, *options: str) -> set[str]:
    out = _run("-c", _AT_FIRST_PACKET, "scan", "127.0.0.1", "-p", "1", "--timeout", "0.5",
               "--db", str(tmp_path / "s.db"), *options)
    assert "FIRST" in out.stderr, out.stderr
    line = next(x for x in out.stderr.splitlines() if x.startswith("FIRST"))
    return set(line.split(" MODULES ")[1].split())


def test_connect_scan_imports_only_what_its_first_packet_needs(tmp_path: Path) -> None:
    """Connect discovery: the store, the connection ledger (it admits each pair before the
    connect) and the sweep are there when the first connect leaves; nothing of the answer.
    A command line the early start takes (cli.launch) connects before the command line is
    parsed by typer, the Store or the ledger loaded, after the ledger's first-grant rule
    (`vncaudit.admission`) admitted the pair in the store (tests/test_connstart.py)."""
    imported = _modules_at_first_packet(tmp_path, "--exclude", "127.0.0.2")
    for needed in ("vncaudit.store", "vncaudit.budget", "vncaudit.discovery", "vncaudit.engine",
                   "vncaudit.blacklists"):
        assert needed in imported, needed
    for module in (*NOT_BEFORE_FIRST_PACKET, "numpy"):
        assert module not in imported, module
    imported = _modules_at_first_packet(tmp_path)
    assert {"vncaudit.connstart", "vncaudit.admission", "vncaudit.store.schema"} <= imported
    for module in (*NOT_BEFORE_FIRST_PACKET, "numpy", "typer", "asyncio",
                   "vncaudit.store.database", "vncaudit.budget", "vncaudit.discovery"):
        assert module not in imported, module


@pytest.mark.skipif(os.geteuid() != 0, reason="SYN discovery needs raw sockets (root)")
@pytest.mark.parametrize("output", ["table", "json"])
def test_syn_scan_imports_only_what_its_first_packet_needs(tmp_path: Path, output: str) -> None:
    """SYN discovery admits a pair in the ledger when it answers: its rules (the TOML) are not
    read before the first SYN either; a command line the early start takes (cli.launch) sends
    it before the command line is parsed by typer, the store opened or numpy imported. Nor,
    when the sweep sends the first batch itself, is the ledger (`vncaudit.budget`) loaded, or,
    with -o json, the result types the report's spool holds: they come after the last SYN."""
    imported = _modules_at_first_packet(tmp_path, "--discovery", "syn", "--retries", "0",
                                        "-o", output)
    assert "vncaudit.synstart" in imported
    for module in (*NOT_BEFORE_FIRST_PACKET, "tomllib", "typer", "asyncio", "numpy", "sqlite3",
                   "vncaudit.cli.program", "vncaudit.discovery", "vncaudit.store"):
        assert module not in imported, module
    # Outside what the early start takes (--exclude): the sweep's first batch, as before.
    imported = _modules_at_first_packet(tmp_path, "--discovery", "syn", "--retries", "0",
                                        "--exclude", "127.0.0.2", "-o", output,
                                        "--output-file", str(tmp_path / f"report.{output}"))
    assert "vncaudit.discovery.syn" in imported
    if output == "json":
        assert "vncaudit.report.spool" in imported
    for module in (*NOT_BEFORE_FIRST_PACKET, "tomllib", "vncaudit.budget"):
        assert module not in imported, module


@pytest.mark.parametrize("command", [name for _, names in program.COMMAND_MODULES
                                     for name in names] + [None])
def test_help_is_the_same_loaded_on_demand_or_whole(command: str | None) -> None:
    args = ["vncaudit", command, "--help"] if command else ["vncaudit", "--help"]
    code = "import sys; from vncaudit.cli import app, main; sys.argv = " + repr(args) + "; "
    on_demand = _run("-c", code + "main()")
    whole = _run("-c", code + "[c for c in app.registered_commands]; main()")
    assert on_demand.returncode == whole.returncode == 0, on_demand.stderr + whole.stderr
    assert on_demand.stdout == whole.stdout and on_demand.stdout


SAMPLES: dict[type, list[Any]] = {
    int: ["0", "7", "007", "-1", "+3", " 5", "5 ", "1_000", "1e3", "12.0", "", "abc",
          "99999999999999999999", "1", "4", "5", 5, 0, True, 2.5],
    float: ["0.1", "1", "1.5", "0", "0.05", "-0.5", "1e-3", "inf", "nan", ".5", "5.", "00.5",
            " 2", "", "x", "3.000000000000001", 3, 2.5, True],
    str: ["x", "", "-", "a b", 5],
    Path: ["a/b", "", "-", "~/x", "/", Path("q"), 5],
    bool: [True, False, "true", "no", "", 1, 0],
}


def _outcome(convert: Any, value: Any, param: Any, ctx: Any) -> tuple[str, Any]:
    try:
        result = convert(value, param, ctx)
    except Exception as exc:  # the message the user would read
        text = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        return type(exc).__name__, text
    return type(result).__name__, repr(result)  # repr: nan equals nan


def test_plain_converters_give_typers_values_and_errors() -> None:
    from typer._click import Context
    from typer._coercion import build_runtime_param

    from vncaudit.cli.coercion import PlainConverter, install, plain_kind

    assert install()  # the hook works with the typer in use (else the test is moot)
    group = typer.main.get_command(program.app)
    checked = 0
    for command in group.commands.values():  # type: ignore[attr-defined]
        ctx = Context(command, info_name=command.name)
        for param in command.params:
            kind = plain_kind(param)
            if kind is None:
                continue
            plain = param.get_runtime_param()
            assert isinstance(plain, PlainConverter)
            typers = build_runtime_param(param.type_descriptor)
            element, many = kind
            samples = SAMPLES[element]
            values = [tuple(samples[i:i + 2]) for i in range(len(samples))] if many else samples
            for value in values:
                expected = _outcome(typers._coerce_value, value, param, ctx)
                assert _outcome(plain._coerce_value, value, param, ctx) == expected, \
                    (command.name, param.name, value)
                checked += 1
    assert checked > 500
