"""`vncaudit manpage`: the man page (roff, section 1), generated from the command line itself.

Owns: walking the typer/click command tree of `app` — the top-level help and epilog, every
command's help, usage, arguments, options and examples — and writing them as man(7) roff, from
the same help records `--help` prints, so the page cannot drift from the program. Must not:
hold help text of its own beyond the sections a man page has and the program has no option
for (ENVIRONMENT, FILES, SEE ALSO), or run any command.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from vncaudit import __version__
from vncaudit.cli.common import fail
from vncaudit.cli.program import app

# What the program reads besides its options (each also named in an option's help).
_ENVIRONMENT = (
    ("VNCAUDIT_DB", "The SQLite store when --db is not given "
     "(default ~/.local/share/vncaudit/vncaudit.db)."),
    ("VNCAUDIT_PASSWORD", "scan: the known VNC password, when neither --password nor "
     "--password-file is given (it then shows in no process list or shell history)."),
    ("VNCAUDIT_SERVE_*", "serve: service settings, as in its TOML file (see the README)."),
)
_FILES = (
    ("~/.local/share/vncaudit/vncaudit.db", "The store: every scan and result, as they "
     "arrive (SQLite, WAL)."),
)


def _roff(text: str) -> str:
    """Escape *text* for roff: backslashes, hyphens of options, and a leading dot or quote."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return re.sub(r"^([.'])", r"\\&\1", text, flags=re.M)


def _shown(help_text: str | None) -> str:
    """The part of a docstring --help shows: what comes before a form feed (click's rule)."""
    return (help_text or "").partition("\f")[0]


def _paragraphs(text: str) -> list[str]:
    out: list[str] = []
    for block in re.split(r"\n\s*\n", text.strip()):
        out += [".PP", _roff(" ".join(block.split()))]
    return out


def _preformatted(text: str) -> list[str]:
    lines = [line for line in text.strip("\n").splitlines() if line != "\b"]
    return [".PP", ".nf", *(_roff(line) if line.strip() else "" for line in lines), ".fi"]


def _options(command: Any, ctx: Any) -> list[str]:
    out: list[str] = []
    for param in command.params:
        if getattr(param, "hidden", False):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        out += [".TP", f"\\fB{_roff(names)}\\fR", _roff(" ".join(help_text.split()))]
    return out


def render() -> str:
    """The whole man page of `vncaudit`, as roff."""
    from typer import _click as click  # typer vendors click (0.29+)
    from typer.core import TyperGroup

    # `vncaudit manpage` loads only its own command module (`main` sets `app.only`): the
    # page needs every command.
    only, app.only = app.only, None
    try:
        group = typer.main.get_command(app)
    finally:
        app.only = only
    assert isinstance(group, TyperGroup)
    root = click.Context(group, info_name="vncaudit")
    lines = [
        f'.TH VNCAUDIT 1 "" "vncaudit {__version__}" "User Commands"',
        ".SH NAME",
        "vncaudit \\- " + _roff((group.help or "").split(". ")[0].rstrip(".")),
        ".SH SYNOPSIS",
        ".B vncaudit",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGS\\fR]...",
        ".SH DESCRIPTION",
        *_paragraphs(group.help or ""),
        ".SH OPTIONS",
        *_options(group, root),
        ".SH COMMANDS",
    ]
    for name in group.list_commands(root):
        command = group.get_command(root, name)
        if command is None or command.hidden:
            continue
        ctx = click.Context(command, info_name=name, parent=root)
        usage = " ".join(command.collect_usage_pieces(ctx))
        lines += [f'.SS "vncaudit {name} {_roff(usage)}"', *_paragraphs(_shown(command.help))]
        lines += _options(command, ctx)
        if command.epilog:
            lines += _preformatted(command.epilog)
    if group.epilog:
        lines += [".SH EXAMPLES AND EXIT STATUS", *_preformatted(group.epilog)]
    lines.append(".SH ENVIRONMENT")
    for name, text in _ENVIRONMENT:
        lines += [".TP", f"\\fB{_roff(name)}\\fR", _roff(text)]
    lines.append(".SH FILES")
    for name, text in _FILES:
        lines += [".TP", f"\\fI{_roff(name)}\\fR", _roff(text)]
    lines += [".SH SEE ALSO", "\\fBnmap\\fR(1), \\fBzmap\\fR(8), \\fBmasscan\\fR(8)", ""]
    return "\n".join(lines)


@app.command(epilog="""Examples:

  mkdir -p ~/.local/share/man/man1
  vncaudit manpage --output-file ~/.local/share/man/man1/vncaudit.1
  vncaudit manpage | man -l -                 read it once""")
def manpage(
    output_file: Annotated[
        Path | None, typer.Option("--output-file", metavar="FILE",
                                  help="Write the page here, not stdout.")
    ] = None,
) -> None:
    """Print the man page (roff), made from the same help text as --help."""
    text = render()
    if output_file is None:
        sys.stdout.write(text)
        return
    try:
        output_file.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise fail(f"cannot write {output_file}: {exc.strerror or exc}", 3) from None
