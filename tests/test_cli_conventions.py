"""Command-line conventions: help on every option, shell completion (bash, tested in bash),
the man page made from the help text, `-o FORMAT` wherever there is a machine format (with
`--json` kept as an alias), and the known password kept out of `ps` and shell history."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from typer import _click as click
from typer.core import TyperGroup

from vncaudit.cli import app
from vncaudit.cli.manpage import render
from vncaudit.store import Store

BASH = shutil.which("bash")


def _commands() -> Iterator[tuple[str, Any, Any]]:
    group = typer.main.get_command(app)
    assert isinstance(group, TyperGroup)
    root = click.Context(group, info_name="vncaudit")
    yield "vncaudit", group, root
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        assert command is not None
        yield name, command, click.Context(command, info_name=name, parent=root)


def test_every_option_and_argument_has_help() -> None:
    missing = [f"{name} {param.opts or param.name}" for name, command, _ in _commands()
               for param in command.params if not (getattr(param, "help", None) or "").strip()]
    assert missing == []
    assert all((command.help or "").strip() for _, command, _ in _commands())


def test_man_page_has_every_command_and_option_and_renders_cleanly() -> None:
    page = render()
    for name, command, _ in _commands():
        if name != "vncaudit" and not command.hidden:
            assert f'.SS "vncaudit {name} ' in page, name
        for param in command.params:
            if getattr(param, "hidden", False) or param.param_type_name != "option":
                continue
            for opt in (*param.opts, *param.secondary_opts):
                assert opt.replace("-", "\\-") in page, f"{name} {opt}"
    assert ".SH ENVIRONMENT" in page and "VNCAUDIT_PASSWORD" in page
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed")
    out = subprocess.run([groff, "-man", "-Tutf8", "-ww", "-z"], input=page, text=True,
                         capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_manpage_command_writes_the_same_page(tmp_path: Path) -> None:
    target = tmp_path / "vncaudit.1"
    out = subprocess.run([sys.executable, "-m", "vncaudit", "manpage", "--output-file",
                          str(target)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert target.read_text(encoding="utf-8") == render()


@pytest.fixture
def on_path(tmp_path: Path) -> dict[str, str]:
    """A `vncaudit` on PATH that runs this interpreter (the completion script calls it by
    name), with HOME in tmp_path."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    wrapper = bindir / "vncaudit"
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -m vncaudit "$@"\n')
    wrapper.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}", HOME=str(home),
               SHELL=BASH or "/bin/bash")
    return env


def _complete(env: dict[str, str], *words: str) -> list[str]:
    """What bash offers for the last of *words* after `vncaudit`, through the script that
    `vncaudit --show-completion` prints (run from bash, which it detects)."""
    words_array = " ".join(f"'{w}'" for w in ("vncaudit", *words))
    script = (f"source <(vncaudit --show-completion) && COMP_WORDS=({words_array}) && "
              f"COMP_CWORD={len(words)} && _vncaudit_completion vncaudit && "
              "printf '%s\\n' \"${COMPREPLY[@]}\"")
    out = subprocess.run([BASH or "bash", "-c", script], env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line for line in out.stdout.splitlines() if line]


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_bash_completion_of_commands_options_and_formats(on_path: dict[str, str]) -> None:
    assert _complete(on_path, "sc") == ["scan", "schema"] or "scan" in _complete(on_path, "sc")
    assert _complete(on_path, "man") == ["manpage"]
    assert _complete(on_path, "scan", "--disc") == ["--discovery"]
    assert _complete(on_path, "scan", "--password-f") == ["--password-file"]
    assert "-o" in _complete(on_path, "diff", "-") or "--output" in _complete(
        on_path, "diff", "--")
    assert _complete(on_path, "scan", "-o", "") == ["table", "json", "jsonl", "csv", "xml",
                                                      "html", *_later_formats()]
    assert _complete(on_path, "harden", "-o", "j") == ["json"]


def _later_formats() -> list[str]:
    from vncaudit import report

    return [f for f in report.FORMATS if f not in ("json", "jsonl", "csv", "xml", "html")]


@pytest.mark.skipif(BASH is None, reason="bash is not installed")
def test_install_completion_for_bash(on_path: dict[str, str]) -> None:
    """`vncaudit --install-completion` from bash: a new interactive bash completes vncaudit."""
    out = subprocess.run([BASH or "bash", "-c", "vncaudit --install-completion"], env=on_path,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "bash completion installed" in out.stdout
    shown = subprocess.run([BASH or "bash", "-ic", "complete -p vncaudit"], env=on_path,
                           capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert shown.stdout.strip() == "complete -o default -F _vncaudit_completion vncaudit"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vncaudit", *args], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("command", ["scan", "results", "diff", "local", "harden", "check",
                                     "subdomains"])
def test_every_command_with_a_machine_format_takes_dash_o(command: str) -> None:
    names = {name: command_ for name, command_, _ in _commands()}
    opts = {opt for param in names[command].params for opt in param.opts}
    assert {"-o", "--output"} <= opts, command
    args = {"diff": ["a", "b"], "check": ["127.0.0.1"], "subdomains": ["example.test"],
            "scan": ["127.0.0.1"]}.get(command, [])
    bad = _cli(command, *args, "-o", "yaml")
    assert bad.returncode == 2
    assert bad.stderr.startswith("vncaudit: error: unknown output format 'yaml'; choose")
    assert bad.stderr.count("\n") == 1


@pytest.fixture
def two_scans(tmp_path: Path) -> tuple[Path, str, str]:
    db = tmp_path / "d.db"
    with Store.open(db) as store:
        first = store.create_scan(["127.0.0.1"], "5900", {})
        store.finish_scan(first)
        second = store.create_scan(["127.0.0.1"], "5900", {})
        store.finish_scan(second)
    return db, first, second


def test_diff_dash_o_json_and_the_json_alias_agree(two_scans: tuple[Path, str, str]) -> None:
    db, first, second = two_scans
    with_o = _cli("diff", first, second, "-o", "json", "--db", str(db))
    alias = _cli("diff", first, second, "--json", "--db", str(db))
    table = _cli("diff", first, second, "--db", str(db))
    assert with_o.returncode == alias.returncode == table.returncode == 0, with_o.stderr
    assert json.loads(with_o.stdout) == json.loads(alias.stdout)
    assert table.stdout.startswith("no changes between")
    clash = _cli("diff", first, second, "--json", "-o", "csv", "--db", str(db))
    assert clash.returncode == 2
    assert clash.stderr == "vncaudit: error: --json is -o json; it cannot go with -o csv\n"
    assert "--json" not in _cli("diff", "--help").stdout  # a kept alias, not advertised


def test_password_file_and_environment(tmp_path: Path) -> None:
    from vncaudit.cli.common import known_password

    secret = tmp_path / "pw"
    secret.write_bytes(b"s3cret\r\nsecond line\n")
    env = dict(os.environ, VNCAUDIT_PASSWORD="from-env")
    old = os.environ.get("VNCAUDIT_PASSWORD")
    os.environ["VNCAUDIT_PASSWORD"] = "from-env"
    try:
        assert known_password(None, secret) == "s3cret"
        assert known_password("typed", None) == "typed"
        assert known_password(None, None) == "from-env"
        os.environ["VNCAUDIT_PASSWORD"] = ""
        assert known_password(None, None) is None
    finally:
        if old is None:
            os.environ.pop("VNCAUDIT_PASSWORD", None)
        else:
            os.environ["VNCAUDIT_PASSWORD"] = old
    for content, message in [
        (b"", "the first line is empty"),
        (b"\nx\n", "the first line is empty"),
        (b"\xff\xfe\n", "not UTF-8 text"),
        (b"x" * 5000, "no line break in the first 4096 bytes"),
    ]:
        secret.write_bytes(content)
        out = _cli("scan", "127.0.0.1", "-p", "9", "--password-file", str(secret), env=env)
        assert out.returncode == 2, (content, out.stderr)
        assert out.stderr == f"vncaudit: error: --password-file {secret}: {message}" + (
            "; the password goes there\n" if "empty" in message else
            "; the password goes on the first line\n" if "line break" in message else "\n")
    both = _cli("scan", "127.0.0.1", "--password", "a", "--password-file", str(secret))
    assert both.returncode == 2
    assert both.stderr == "vncaudit: error: give --password or --password-file, not both\n"


@pytest.mark.realserver
@pytest.mark.parametrize("how", ["file", "env"])
def test_known_password_from_file_or_env_logs_in(vnc_server_factory: Any, tmp_path: Path,
                                                  how: str) -> None:
    """A real TigerVNC with VncAuth: the password given by file or environment reads the
    desktop name, as --password does, without being on the command line."""
    from servers import DEFAULT_PASSWORD

    srv = vnc_server_factory("tigervnc-vncauth", desktop="pw-desk")
    args = ["scan", srv.host, "-p", str(srv.port), "-o", "json", "--db", str(tmp_path / "s.db")]
    env = dict(os.environ)
    env.pop("VNCAUDIT_PASSWORD", None)
    if how == "file":
        secret = tmp_path / "pw"
        secret.write_text(DEFAULT_PASSWORD + "\n")
        args += ["--password-file", str(secret)]
    else:
        env["VNCAUDIT_PASSWORD"] = DEFAULT_PASSWORD
    out = _cli(*args, env=env)
    assert out.returncode in (0, 1), out.stderr
    assert DEFAULT_PASSWORD not in out.stdout
    (service,) = json.loads(out.stdout)["services"]
    assert '"pw-desk"' in json.dumps(service), service  # read after logging in
    if how == "env":  # the control: without the password the name stays behind the login
        env.pop("VNCAUDIT_PASSWORD")
        plain = _cli(*args, env=env)
        (service,) = json.loads(plain.stdout)["services"]
        assert "pw-desk" not in json.dumps(service)


def test_help_at_80_columns_keeps_examples_and_whole_first_sentences() -> None:
    """Plain two-column help: the command list shows each first sentence whole (click would
    cut it at "..."), and an epilog's examples keep their lines (click would re-flow them into
    one paragraph), with a comment that would pass 80 columns moved under its command."""
    from typer.testing import CliRunner

    runner = CliRunner(env={"COLUMNS": "80"})
    top = runner.invoke(app, ["--help"], prog_name="vncaudit")
    assert top.exit_code == 0
    assert "..." not in top.output.split("Commands:")[1]
    assert "  scan        Scan targets for VNC: one connection per port, no password ever\n" \
           "              sent.\n" in top.output
    for name, command, _ in _commands():
        if name == "vncaudit" or command.hidden:
            continue
        out = runner.invoke(app, [name, "--help"], prog_name="vncaudit").output
        assert out.startswith(f"Usage: vncaudit {name} "), out
        examples = [line.strip() for line in (command.epilog or "").splitlines()
                    if line.strip().startswith(("vncaudit ", "sudo vncaudit "))]
        shown = [line.strip() for line in out.splitlines()]
        for example in examples:
            head = re.split(r"\s{2,}", example)[0]
            assert any(line == head or line.startswith(head + "  ") for line in shown), (
                name, head)
        for line in out.splitlines():
            assert len(line) <= 80 or line.strip().startswith(("vncaudit ", "sudo ")), line
