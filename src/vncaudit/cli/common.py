"""Shared command line plumbing, independent of `app`: the one-line error handling.

Owns: the command group class that turns click's usage errors into one `vncaudit: error:`
line (exit 2), `error_line` / `fail`, logging set-up, the stderr console `err`, the option
aliases every command shares (`OutputOpt`, `output_option` / `output_format` and the
`--json` alias, `OutputFileOpt`, `DbOpt`, `AllOpt`, `FixOpt`, `TrustedOpt`, the password
options), value checks refused before any packet (`finite`, `--trusted`, output file) and
opening the store. Must not: define commands, import `vncaudit.cli.program` (which imports
it), or hold scanning, grading or formatting logic.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import typer
from typer._click import exceptions as click_errors  # typer vendors click (0.29+)
from typer.core import TyperGroup

from vncaudit import report
from vncaudit.store import Store, StoreError, default_db_path

if TYPE_CHECKING:
    from rich.console import Console


class OneLineErrors(TyperGroup):
    """The command group, with click's own usage errors (unknown option, a value out of range,
    a missing argument) printed as one `vncaudit: error:` line like every other failure,
    instead of a usage box. A user's script can then rely on one line and exit code 2."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        from vncaudit.cli import coercion

        coercion.install()  # start-up: no pydantic model per option (see there)
        try:
            rv = super().main(args=args, prog_name=prog_name, complete_var=complete_var,
                              standalone_mode=False, **extra)
        except click_errors.NoArgsIsHelpError as exc:
            # Bare `vncaudit` (or a group without its command): the help is the answer.
            text = exc.format_message().strip()
            if text:
                sys.stderr.write(text + "\n")
            code: int = exc.exit_code
        except click_errors.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            error_line(exc.format_message() + hint)
            code = exc.exit_code
        except typer.Abort:  # Ctrl-C or end of input at a prompt
            error_line("aborted; nothing changed")
            code = 130
        else:
            code = rv if isinstance(rv, int) else 0
        if not standalone_mode:
            return code
        sys.exit(code)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None and command.epilog:
            command.epilog = keep_layout(command.epilog)
        return command

    def format_epilog(self, ctx: Any, formatter: Any) -> None:
        if self.epilog:
            self.epilog = keep_layout(self.epilog)
        super().format_epilog(ctx, formatter)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        # Each command's first sentence whole, wrapped, where click would cut it at "...".
        rows = []
        for name in self.list_commands(ctx):
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                first = (command.short_help or command.help or "").strip().split("\n\n")[0]
                rows.append((name, " ".join(first.split())))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            # Ctrl-C outside a scan's own handler (check, local, subdomains ...): say so, in
            # the same one line, instead of exiting 130 silently.
            error_line("interrupted")
            raise typer.Exit(130) from None


_EPILOG_WIDTH = 76  # click's help is at most 80 wide: 78 columns, the epilog indented by 2


def keep_layout(text: str) -> str:
    """Mark each indented paragraph of an epilog (the examples) for click to print as it is
    written (a `\\b` line), instead of re-flowing its aligned columns into one paragraph;
    when a comment would pass 80 columns, each comment goes on a line under its command."""
    out = []
    for paragraph in re.split(r"\n\s*\n", text.strip("\n")):
        lines = paragraph.splitlines()
        if lines[0] == "\b" or not any(line[:1].isspace() for line in lines):
            out.append(paragraph)
            continue
        examples = [re.fullmatch(r"(\s*)(\S.*?)\s{2,}(\S.*)", line) for line in lines]
        # One comment too long for its line puts every comment of the paragraph under its
        # command, so the examples still line up.
        split = any(m and len(line) > _EPILOG_WIDTH for m, line in zip(examples, lines,
                                                                        strict=True))
        kept = ["\b"]
        for example, line in zip(examples, lines, strict=True):
            if example and split:
                indent, command, comment = example.groups()
                kept += [indent + command, f"{indent}    {comment}"]
            else:
                kept.append(line)
        out.append("\n".join(kept))
    return "\n\n".join(out)


class _Stderr:
    """The stderr console, made (and rich imported: tens of ms) the first time it is used, not
    by every command at start-up: a scan asks it for nothing before its first packet."""

    _console: Console | None = None

    def _made(self) -> Console:
        console = self._console
        if console is None:
            from rich.console import Console

            console = _Stderr._console = Console(stderr=True, highlight=False)
        return console

    def __getattr__(self, name: str) -> Any:
        return getattr(self._made(), name)

    # A live display (the progress bar, a status spinner) holds the console as a context
    # manager, and `with` looks these up on the type, past __getattr__.
    def __enter__(self) -> Console:
        return self._made().__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._made().__exit__(*exc)


_STDERR = _Stderr()
err: Console = cast("Console", _STDERR)


def make_console() -> None:
    """Make the stderr console now (rich imported), if it is not made yet."""
    _STDERR._made()


def stderr_is_terminal() -> bool:
    """`err.is_terminal`, without making the console (and importing rich, which a scan that
    draws nothing never needs) when rich's answer is plainly no: stderr is not a terminal and
    neither TTY_COMPATIBLE=1 nor FORCE_COLOR says to treat it as one (rich's own rules)."""
    if os.environ.get("TTY_COMPATIBLE") != "1" and os.environ.get("FORCE_COLOR") is None:
        try:
            if not sys.stderr.isatty():
                return False
        except ValueError:  # closed
            return False
    return err.is_terminal
log = logging.getLogger("vncaudit")


def error_line(message: str) -> None:
    # Plain write: rich would wrap a long message onto two lines.
    sys.stderr.write("vncaudit: error: " + " ".join(message.split()) + "\n")


def fail(message: str, code: int = 2) -> typer.Exit:
    error_line(message)
    return typer.Exit(code)


def setup_logging(verbose: int) -> None:
    """-v counts up; a negative count is -q (errors only)."""
    level = (logging.ERROR if verbose < 0 else logging.WARNING if verbose == 0
             else logging.INFO if verbose == 1 else logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)


OUTPUTS = ("table", *report.FORMATS)


def _completer(formats: Sequence[str]) -> Any:
    def complete(incomplete: str) -> list[str]:
        return [name for name in formats if name.startswith(incomplete)]

    return complete


def output_option(formats: Sequence[str], note: str = "") -> Any:
    """`-o/--output FORMAT` of a command whose output comes in *formats* (the first is the
    default), completed by the shell. Check the value with `output_format`."""
    names = ", ".join(formats[:-1]) + f" or {formats[-1]}" if len(formats) > 1 else formats[0]
    return typer.Option("-o", "--output", metavar="FORMAT", autocompletion=_completer(formats),
                        help=f"Output format: {names}{note}.")


# `--json`, which diff, harden, check and subdomains took before they had -o: kept working.
JsonAliasOpt = Annotated[
    bool, typer.Option("--json", hidden=True, help="Same as -o json.")
]


def output_format(output: str, as_json: bool, formats: Sequence[str]) -> str:
    """The format asked for by -o and the --json alias; one line, exit 2, when it is none of
    *formats* or the two disagree."""
    if as_json:
        if output not in (formats[0], "json"):
            raise fail(f"--json is -o json; it cannot go with -o {output}")
        output = "json"
    if output not in formats:
        raise fail(f"unknown output format {output!r}; choose "
                    f"{', '.join(formats[:-1])} or {formats[-1]}")
    return output


OutputOpt = Annotated[str, output_option(OUTPUTS)]
OutputFileOpt = Annotated[
    Path | None, typer.Option("--output-file", metavar="FILE",
                              help="Write the report here, not stdout.")
]
QuietOpt = Annotated[
    bool, typer.Option("-q", "--quiet", help="Nothing on stderr but errors: no progress bar, "
                       "no summary line, no warnings.")
]
StatusFileOpt = Annotated[
    Path | None,
    typer.Option("--status-file", metavar="FILE",
                 help="Write progress as JSON lines (start, progress every second, end) to "
                 "FILE, or to stderr with '-', for wrappers."),
]
AllOpt = Annotated[bool, typer.Option("--all", help="Also list closed and filtered ports.")]
DbOpt = Annotated[
    Path | None,
    typer.Option("--db", metavar="FILE", help="SQLite store. Default: $VNCAUDIT_DB, else "
                 "~/.local/share/vncaudit/vncaudit.db."),
]
def finite(value: float | None) -> float | None:
    """Option callback: `inf` passes click's range check (and `nan` any comparison), but no
    deadline or rate is infinite, and the stored options are JSON, which has no `inf`: refused
    here, before any packet, instead of failing later (exit 3) or waiting forever."""
    import math

    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def check_trusted_option(trusted: str | None) -> None:
    """--trusted goes into commands meant for a root shell: refuse it before any scanning."""
    if trusted is not None:
        from vncaudit.remedies import UnsafeValueError, check_trusted

        try:
            check_trusted(trusted)
        except UnsafeValueError as exc:
            raise fail(f"--trusted: {exc}") from None
        check_not_everyone(trusted, "--trusted")


def check_not_everyone(network: str, option: str) -> None:
    """An allow-list entry as broad as 0.0.0.0/0 (or anything past /8, IPv6 past /16) keeps
    the port open to the internet while the plan reads as fixed: refuse it, as the web
    service's allow-list does."""
    import ipaddress

    try:
        net = ipaddress.ip_network(network.strip(), strict=False)
    except ValueError:
        return  # a host name or a single address
    limit = 8 if net.version == 4 else 16
    if net.prefixlen < limit:
        bits = net.max_prefixlen - net.prefixlen
        what = "every address" if net.prefixlen == 0 else f"2**{bits} addresses"
        raise fail(f"{option} {network}: allows {what}, which keeps the port open to the "
                    f"internet; list your own networks (/{limit} or narrower)")


RiskLockoutOpt = Annotated[
    bool,
    typer.Option("--risk-lockout", help="Connect even where the connection ledger says the "
                 "server would start refusing this address: TigerVNC and RealVNC allow four "
                 "connections that do not log in, then refuse every connection from the "
                 "address (yours, and everyone's behind the same NAT, jump host or SSH "
                 "tunnel) for 10 s, doubling each time. Without it such servers are reported "
                 "with the facts read last, and their age."),
]
PasswordOpt = Annotated[
    str | None,
    typer.Option("--password", metavar="PASSWORD",
                 help="Active: authenticate with this known password to read the desktop name "
                 "(and --screenshot) on protected servers. It shows in ps and shell history: "
                 "prefer --password-file or $VNCAUDIT_PASSWORD."),
]
PasswordFileOpt = Annotated[
    Path | None,
    typer.Option("--password-file", metavar="FILE",
                 help="Active: as --password, read from the first line of FILE "
                 "(/dev/stdin for a pipe). Without either: $VNCAUDIT_PASSWORD."),
]
_MAX_PASSWORD_FILE = 4096  # bytes read; a password file is one short line


def known_password(password: str | None, password_file: Path | None) -> str | None:
    """The known password from --password, --password-file or $VNCAUDIT_PASSWORD (in that
    order; an empty variable is none). Every way a file is not a password is one line."""
    if password is not None and password_file is not None:
        raise fail("give --password or --password-file, not both")
    if password is not None:
        return password
    if password_file is None:
        return os.environ.get("VNCAUDIT_PASSWORD") or None
    try:
        with open(password_file, "rb") as stream:
            data = stream.read(_MAX_PASSWORD_FILE)
    except OSError as exc:
        raise fail(f"--password-file {password_file}: cannot read: "
                    f"{exc.strerror or exc}") from None
    line = data.split(b"\n", 1)[0].removesuffix(b"\r")
    if b"\n" not in data and len(data) == _MAX_PASSWORD_FILE:
        raise fail(f"--password-file {password_file}: no line break in the first "
                    f"{_MAX_PASSWORD_FILE} bytes; the password goes on the first line")
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(f"--password-file {password_file}: not UTF-8 text") from None
    if not text:
        raise fail(f"--password-file {password_file}: the first line is empty; the password "
                    "goes there")
    return text


FixOpt = Annotated[
    bool,
    typer.Option("--fix/--no-fix", help="Table output: after the table, list every finding "
                 "with the commands that fix it for that host and port."),
]
TrustedOpt = Annotated[
    str | None,
    typer.Option("--trusted", metavar="NETWORK",
                 help="Table output: the network that keeps access (IP, CIDR or "
                 "host name), filled into the firewall allow-list commands."),
]


def check_output_file(path: Path | None, keep: Iterable[Path | str | None] = ()) -> None:
    """--output-file is checked before any work, so a long scan never ends in "cannot write"
    (the store keeps the results either way). The file itself is not created yet. *keep*:
    files the report must not overwrite (the store, the input lists)."""
    if path is None:
        return
    for other in (*keep, default_db_path()):
        if other is None or str(other) in ("", "-", ":memory:"):
            continue
        with contextlib.suppress(OSError):
            if path.exists() and os.path.samefile(path, Path(other).expanduser()):
                raise fail(f"--output-file {path} would overwrite {other} (the store or an "
                            "input of this command); write the report elsewhere")
    shown = str(path) or "''"
    if not str(path).strip() or path.is_dir():
        raise fail(f"--output-file {shown}: is a directory; give a file name")
    parent = path.parent
    if not parent.is_dir():
        raise fail(f"--output-file {shown}: directory {parent} does not exist")
    writable = os.access(path, os.W_OK) if path.exists() else os.access(parent, os.W_OK | os.X_OK)
    if not writable:
        raise fail(f"--output-file {shown}: permission denied")


def extra_hint(extra: str) -> str:
    """How to add an optional part (a pyproject extra) to the install the README made."""
    return (f"install the '{extra}' extra: pipx install --force '.[{extra}]' from the source "
            f"tree (in a venv: pip install '.[{extra}]')")


def require_extra(extra: str, modules: Sequence[str], what: str) -> None:
    """Refuse *what* in one line, before any work, when a module of *extra* is missing."""
    import importlib.util

    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise fail(f"{what} needs the '{extra}' extra ({', '.join(missing)} not installed);"
                    f" {extra_hint(extra).removeprefix(f'install the {extra!r} extra: ')}", 3)


def open_store(db: Path | None) -> Store:
    """Open the store for a command; a --db the user typed must name a file in a directory
    that exists (only the default location is created), so a typo is an error, not a new
    empty database somewhere."""
    if db is not None and str(db) != ":memory:":
        try:
            where = db.expanduser()
        except RuntimeError:  # ~name of no user: pathlib cannot tell whose home it is
            raise fail(f"--db {db}: no user named {str(db).split('/')[0][1:]!r} "
                       "(whose home ~ would name)") from None
        if where.is_dir():
            raise fail(f"--db {db}: is a directory; give the database file's path")
        if not where.parent.is_dir():
            raise fail(f"--db {db}: directory {where.parent} does not exist")
    try:
        return Store.open(db)
    except StoreError as exc:
        raise fail(str(exc), 3) from None


def write_out(output_file: Path | None, text: str) -> None:
    """*text* to --output-file (UTF-8) or stdout; a failure to write is one line, exit 3."""
    if output_file is None:
        sys.stdout.write(text)
        return
    try:
        output_file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {output_file}: {exc.strerror or exc}", 3) from None
