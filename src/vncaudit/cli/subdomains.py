"""The `vncaudit subdomains` command: a domain's hosts found by DNS (zone transfer, wordlist).

Owns: the command's options and its output. Must not: hold DNS logic (that is
`vncaudit.subdomains`) or send traffic to anything but the name servers it is told of.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vncaudit.cli.common import JsonAliasOpt, err, fail, finite, output_format, output_option
from vncaudit.cli.output import text_cell
from vncaudit.cli.program import app
from vncaudit.exceptions import NetworkError, UsageError


@app.command(epilog="""Examples:

  vncaudit subdomains example.org
  vncaudit subdomains example.org --wordlist labels.txt -o json
  vncaudit subdomains example.org --resolver 192.0.2.53   ask this DNS server
  vncaudit scan --domain example.org          find the hosts and scan them""")
def subdomains(
    domain: Annotated[str, typer.Argument(metavar="DOMAIN",
                                          help="The domain whose hosts to find.")],
    resolver: Annotated[
        str | None, typer.Option("--resolver", help="DNS server to ask, IP[:PORT].")
    ] = None,
    wordlist: Annotated[
        list[Path] | None, typer.Option("--wordlist", help="Extra host labels, one per line.")
    ] = None,
    no_builtin: Annotated[
        bool, typer.Option("--no-builtin-wordlist", help="Use only --wordlist labels.")
    ] = False,
    no_axfr: Annotated[bool, typer.Option("--no-axfr", help="Do not try zone transfers.")] = False,
    concurrency: Annotated[
        int, typer.Option("--dns-concurrency", min=1, help="DNS queries in flight.")
    ] = 50,
    rate: Annotated[
        float | None, typer.Option("--dns-rate", min=0.1, callback=finite,
                                    help="Max DNS queries per second.")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--dns-timeout", min=0.1, callback=finite,
                             help="Seconds per DNS query.")
    ] = 3.0,
    axfr_port: Annotated[
        int, typer.Option("--axfr-port", hidden=True, help="Name servers' port for zone "
                          "transfers (tests run their DNS server on another port).")
    ] = 53,
    output: Annotated[str, output_option(("table", "json"))] = "table",
    as_json: JsonAliasOpt = False,
) -> None:
    """Find a domain's hosts by DNS: zone transfer, a wordlist of common labels, wildcard aware."""
    as_json = output_format(output, as_json, ("table", "json")) == "json"
    import json

    from vncaudit import subdomains as sub

    try:
        words: list[str] = []
        for path in wordlist or []:
            words += sub.read_wordlist(path)
        found = sub.discover_sync(
            domain, resolver=resolver, wordlist=words or None, builtin=not no_builtin,
            concurrency=concurrency, rate=rate, timeout=timeout, axfr=not no_axfr,
            axfr_port=axfr_port,
        )
    except UsageError as exc:
        raise fail(str(exc)) from None
    except NetworkError as exc:
        raise fail(str(exc), 3) from None
    if as_json:
        sys.stdout.write(json.dumps(found.to_dict(), indent=2) + "\n")
        return
    out = Console(highlight=False)
    table = Table()
    for col in ("name", "addresses", "cname chain", "found by"):
        table.add_column(col, overflow="fold")
    for host in found.hosts:
        # Names come from the zone's servers (AXFR): "[/]x" is a valid label, not markup.
        table.add_row(text_cell(host.name), "\n".join(host.addresses) or "[dim](none)[/]",
                      text_cell(" -> ".join(host.cnames)), ", ".join(host.sources))
    out.print(table)
    if found.wildcard is not None:
        out.print(f"wildcard DNS: random names resolve to {', '.join(found.wildcard)}; "
                  f"{found.wildcard_dropped} wordlist names dropped as wildcard answers")
    for server, status in found.axfr.items():
        style = "bold red" if status == "ok" else "dim"
        note = " (zone transfer open to anyone)" if status == "ok" else ""
        out.print(f"[{style}]zone transfer from {server}: {status}{note}[/]")
    for line in found.errors:
        err.print(line, style="dim", markup=False)
