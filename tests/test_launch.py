"""The launcher's strict pre-parse (vncaudit.cli.launch.preparse) and the early start's walk
(vncaudit.synstart.first_pairs), without sending anything: over generated `vncaudit scan`
command lines the pre-parse either declines or reads exactly what typer's parse and the scan
command build from them (targets in the walk's order, ports, rate, retries, timeout, mode),
and never takes a line that the full parse refuses. The tables the launcher keeps of its own
(special networks, output formats, default ports) agree with the ones they copy.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
import typer.main
from hypothesis import given, settings
from hypothesis import strategies as st

from vncaudit import rawsyn, spec, synstart
from vncaudit.cli import common, launch, program
from vncaudit.discovery import Mode
from vncaudit.targets import SPECIAL_NETWORKS, build_target_space, parse_ports
from vncaudit.targets.blocks import merge_blocks

# -- the tables the launcher copies ------------------------------------------------------------


def test_special_networks_are_the_targets_ones() -> None:
    expected = sorted((int(net.network_address), int(net.broadcast_address))
                      for net in (ipaddress.ip_network(n) for n, _ in SPECIAL_NETWORKS)
                      if net.version == 4)
    assert sorted(launch.SPECIAL_V4) == expected


def test_outputs_and_default_ports_are_the_commands() -> None:
    assert set(launch.OUTPUTS) <= set(common.OUTPUTS)
    assert launch.expand_ports(launch.DEFAULT_PORTS) == parse_ports(spec.DEFAULT_PORTS)


# -- the walk ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(blocks=st.lists(st.tuples(st.integers(0, (1 << 32) - 1), st.integers(0, 300)),
                       min_size=1, max_size=4),
       ports=st.lists(st.integers(1, 65535), min_size=1, max_size=5),
       seed=st.integers(0, (1 << 64) - 1))
def test_first_pairs_are_the_target_spaces_walk(blocks: list[tuple[int, int]],
                                                ports: list[int], seed: int) -> None:
    """The early start's first pairs are the first pairs of `TargetSpace.iter_targets` for
    the same intervals, ports and seed."""
    ranges = [(a, min(a + n, (1 << 32) - 1)) for a, n in blocks]
    expressions = [f"{ipaddress.IPv4Address(a)}-{ipaddress.IPv4Address(b)}" for a, b in ranges]
    space = build_target_space(expressions, ports, allow_special=True)
    plan = synstart.EarlyPlan(tuple(merge_blocks(ranges)), tuple(sorted(set(ports))), None,
                              None, 5.0)
    assert plan.count == space.count
    n = min(space.count, 100)
    walk = [(int(ipaddress.IPv4Address(t.host)) << 16) | t.port
            for t in itertools.islice(space.iter_targets(seed), n)]
    assert synstart.first_pairs(plan, seed, n) == walk


# -- the pre-parse against typer's parse ---------------------------------------------------------

SCAN = typer.main.get_command(program.app).commands["scan"]  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("launch")
    (where / "dir").mkdir()
    (where / "old.db").write_bytes(b"")
    (where / "hosts.txt").write_text("10.0.0.1\n")
    (where / "ro").mkdir(mode=0o555)
    return where


def _octet() -> st.SearchStrategy[str]:
    return st.one_of(st.integers(0, 255).map(str), st.sampled_from(["256", "010", "00", "1e1",
                                                                    "", "٣", " 1", "+1"]))


TARGETS = st.one_of(
    st.builds(lambda *o: ".".join(o), _octet(), _octet(), _octet(), _octet()),
    st.builds(lambda a, p: f"{ipaddress.IPv4Address(a)}/{p}", st.integers(0, (1 << 32) - 1),
              st.one_of(st.integers(0, 33).map(str),
                        st.sampled_from(["08", "", "x", "255.0.0.0"]))),
    st.sampled_from(["198.18.0.1", "198.18.0.0/30", "10.0.0.1-5", "10.0.0.*", "10.0.0",
                     "host.example", "::1", "fd00::/120", "0.0.0.0/0", "224.0.0.1",
                     "198.51.100.7", "203.0.113.0/23", "192.0.2.0/25", "10.0.0.1:5900",
                     "http://10.0.0.1/", "10.0.0.1 ", "-", "255.255.255.255"]),
)
NUMBERS = st.one_of(st.integers(0, 300000).map(str),
                    st.sampled_from(["0.1", "0.05", "0.3", "1.5", "2", "1e3", "inf", "nan",
                                     "-1", "+3", " 5", "5 ", "1_000", ".5", "5.", "00.5", "0",
                                     "007", "", "x", "1.0000000001", "99999999999999999999"]))
PORTS = st.one_of(
    st.lists(st.one_of(st.integers(0, 70000).map(str),
                       st.tuples(st.integers(0, 70000), st.integers(0, 70000)).map(
                           lambda t: f"{t[0]}-{t[1]}")), min_size=1, max_size=3).map(",".join),
    st.sampled_from(["5900", "5900-5910,5800", ":0-:9", "-", "all", "5900-", "-100", "",
                     "05900", "5900, 5901", "5900,,5901"]))


def _option(files: Path) -> st.SearchStrategy[list[str]]:
    dbs = st.sampled_from([str(files / "new.db"), str(files / "old.db"), str(files / "dir"),
                           str(files / "nowhere" / "x.db"), ":memory:", "~/x.db", "",
                           str(files / "dir") + "/", "-x", "rel.db"])
    outs = st.sampled_from([str(files / "new.json"), str(files / "old.db"), str(files / "dir"),
                            str(files / "nowhere" / "x.json"), "~/x.json", "", " x.json",
                            str(files / "dir") + "/", "-x", "rel.json", str(files / "ro" / "x")])
    valued = st.one_of(
        st.tuples(st.sampled_from(["-p", "--ports"]), PORTS),
        st.tuples(st.sampled_from(["--rate", "--timeout", "--retries", "--concurrency"]),
                  NUMBERS),
        st.tuples(st.just("--discovery"), st.sampled_from(["syn", "syn", "connect", "SYN", ""])),
        st.tuples(st.just("--db"), dbs),
        st.tuples(st.sampled_from(["-o", "--output"]),
                  st.sampled_from(["table", "json", "jsonl", "csv", "xml", "JSON"])),
        st.tuples(st.just("--output-file"), outs),
        st.tuples(st.sampled_from(["--exclude", "-iL", "--resume", "--workers", "--trusted"]),
                  st.sampled_from(["10.0.0.1", str(files / "hosts.txt"), "2"])),
    )
    joined = valued.map(lambda t: [f"{t[0]}={t[1]}"] if t[0].startswith("--") else
                        [f"{t[0]}{t[1]}"])
    flags = st.sampled_from(["--all", "-q", "--quiet", "-v", "-vv", "--verbose", "--no-web",
                             "--allow-special", "-h", "--", "--version", "-p", "--rate"])
    return st.one_of(valued.map(list), valued.map(list), joined, flags.map(lambda f: [f]))


# Lines inside the subset, most of the time: what the pre-parse must read exactly as typer.
UNICAST = st.integers(0x01000000, 0xDFFFFFFF)  # 1.0.0.0-223.255.255.255: rarely special
PLAIN_TARGETS = st.one_of(
    UNICAST.map(lambda a: str(ipaddress.IPv4Address(a))),
    st.builds(lambda a, p: f"{ipaddress.IPv4Address(a)}/{p}", UNICAST, st.integers(14, 32)))


def _plain_option(files: Path) -> st.SearchStrategy[list[str]]:
    ports = st.lists(st.integers(1, 65535).flatmap(
        lambda a: st.one_of(st.just(str(a)), st.integers(a, min(65535, a + 5)).map(
            lambda b: f"{a}-{b}"))), min_size=1, max_size=3).map(",".join)
    decimal = st.one_of(st.integers(1, 400000).map(str),
                        st.decimals(min_value="0.1", max_value="1000", places=3).map(str))
    pair = st.one_of(
        st.tuples(st.sampled_from(["-p", "--ports"]), ports),
        st.tuples(st.sampled_from(["--rate", "--timeout"]), decimal),
        st.tuples(st.sampled_from(["--retries", "--concurrency"]),
                  st.integers(0, 9).map(str)),
        st.tuples(st.just("--db"), st.sampled_from([str(files / "new.db"),
                                                    str(files / "old.db"), ":memory:"])),
        st.tuples(st.sampled_from(["-o", "--output"]), st.sampled_from(launch.OUTPUTS)),
        st.tuples(st.just("--output-file"), st.sampled_from([str(files / "new.json"),
                                                             str(files / "r.jsonl")])),
    )
    return st.one_of(pair.map(list), pair.map(lambda t: [f"{t[0]}={t[1]}"] if
                                             t[0].startswith("--") else list(t)),
                     st.sampled_from([["--all"], ["-q"], ["--quiet"], ["-v"], ["--verbose"]]))


@st.composite
def command_lines(draw: st.DrawFn, files: Path) -> list[str]:
    plain = draw(st.booleans())
    targets, options = (PLAIN_TARGETS, _plain_option(files)) if plain else \
        (TARGETS, _option(files))
    pieces: list[list[str]] = [["--discovery", "syn"]] if plain or draw(st.booleans()) else []
    pieces += [[t] for t in draw(st.lists(targets, min_size=int(plain), max_size=3))]
    pieces += draw(st.lists(options, max_size=5))
    if plain and draw(st.integers(0, 3)) == 0:  # one piece from outside the subset
        pieces.append(draw(st.one_of(TARGETS.map(lambda t: [t]), _option(files))))
    order = draw(st.permutations(pieces))
    return ["scan", *(token for piece in order for token in piece)]


def _full_parse(args: list[str]) -> spec.ScanSpec:
    """What typer's parse and the scan command's own checks build of `args` (a scan that
    never runs); raises whatever they raise for a line they refuse."""
    ctx = SCAN.make_context("scan", list(args[1:]))
    params = ctx.params
    assert params["output"] in common.OUTPUTS and params["trusted"] is None
    assert params["fail_on"] is None
    common.check_output_file(params["output_file"], [params["db"]])
    with common.open_store(params["db"]):
        pass
    return spec.ScanSpec(
        expressions=tuple(params["targets"] or ()),
        ports=params["ports"] if params["ports"] is not None else spec.DEFAULT_PORTS,
        excludes=tuple(params["exclude"] or ()), allow_special=params["allow_special"],
        input_files=tuple(str(p) for p in params["input_list"] or ()),
        timeout=params["timeout"], concurrency=params["concurrency"], rate=params["rate"],
        discovery=Mode(params["discovery_mode"]), retries=params["retries"])


def _pairs(space_pairs: Iterator[tuple[str, int]]) -> list[int]:
    return [(int(ipaddress.IPv4Address(h)) << 16) | p for h, p in space_pairs]


def check_agrees(args: list[str]) -> bool:
    """Whether the pre-parse took `args`; when it did, that typer's parse and the command
    read the same scan from them."""
    plan = launch.preparse(args, {})
    if plan is None:
        return False
    try:
        full = _full_parse(args)
        space = full.target_space()
    except (typer.Exit, Exception) as exc:  # a refusal of the full parse
        raise AssertionError(f"the pre-parse took {args}, the full parse refused it: "
                             f"{type(exc).__name__}: {exc}") from None
    assert full.discovery is Mode(plan.mode)
    assert (full.rate, full.retries, full.timeout) == (plan.rate, plan.retries, plan.timeout)
    assert space.ports == plan.ports
    assert space.count == plan.count
    assert not space.excludes
    seed = 0x5EED ^ space.count
    n = min(space.count, 300)
    walk = _pairs((t.host, t.port) for t in itertools.islice(space.iter_targets(seed), n))
    assert synstart.first_pairs(plan, seed, n) == walk
    return True


@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_the_preparse_declines_or_agrees_with_the_full_parse(files: Path,
                                                             data: st.DataObject) -> None:
    check_agrees(data.draw(command_lines(files)))


def test_the_preparse_takes_the_usual_syn_scans(files: Path) -> None:
    """The command lines of the benchmarks and the SYN tests are taken (and read as typer
    reads them); one thing more or different, and they are not."""
    db = str(files / "new.db")
    taken = [
        ["scan", "198.18.0.7", "-p", "5900", "--timeout", "0.3", "--retries", "0",
         "--discovery", "syn", "--db", db],
        ["scan", "198.18.0.0/16", "-p", "5900", "--timeout", "2", "--discovery", "syn",
         "--rate", "200000", "--retries", "0", "--db", db],
        ["scan", "198.18.4.0/22", "-p", "5900,7777", "--timeout", "0.5", "--retries", "1",
         "--discovery", "syn", "--concurrency", "8192", "-o", "json", "--all", "--db", db],
        ["scan", "--discovery=syn", "10.0.0.0/24", "10.0.1.0/24", "--ports=5900-5902", "-q",
         "-v"],
        # the /16 with zmap's settings, as bench/scan_bench.py runs it
        ["scan", "198.18.0.0/16", "-p", "5900", "--timeout", "2", "--discovery", "syn",
         "--rate", "200000", "--retries", "0", "--concurrency", "8192", "--db", db, "-o",
         "json", "--output-file", str(files / "new.json")],
    ]
    for args in taken:
        assert check_agrees(args), args
    base = taken[0]
    for extra in (["--exclude", "198.18.0.8"], ["--allow-special"], ["-iL", "x"], ["--"],
                  ["-vv"], ["--no-web"], ["--rate", "1e5"], ["--timeout", "0.3"],
                  ["-o", "csv"], ["--web"], ["--resume", "s-1"], ["-h"],
                  ["--output-file", str(files / "old.db")], ["--output-file", str(files)],
                  ["--output-file", str(files / "nowhere" / "x.json")]):
        assert launch.preparse(base + extra, {}) is None, extra
    connect = launch.preparse([a if a != "syn" else "connect" for a in base], {})
    assert connect is not None and connect.mode == "connect"
    for args in (["scan", "198.18.0.7", "-p", "5900", "--timeout", "0.3", "--db", db],
                 ["scan", "127.0.0.1", "--discovery", "connect", "-o", "json", "--all"]):
        assert check_agrees(args), args
        plan = launch.preparse(args, {})
        assert plan is not None and plan.mode == "connect"
    assert launch.preparse([*base[:-4], "--discovery", "SYN"], {}) is None
    assert launch.preparse(base, {"_VNCAUDIT_COMPLETE": "bash_source"}) is None
    assert launch.preparse(["--version", *base], {}) is None
    assert launch.preparse([*base[:1], "198.51.100.7", *base[2:]], {}) is None


def test_the_early_start_needs_raw_socket_rights() -> None:
    """Without CAP_NET_RAW nothing starts early (root runs it minus the capability, with
    setpriv), and nothing is left open."""
    code = ("import os; from vncaudit import synstart; from vncaudit.cli import launch; "
            "plan = launch.preparse(['scan', '127.0.0.1', '-p', '9', '--discovery', 'syn'], {}); "
            "assert plan is not None; "
            "print(synstart.start(plan), synstart.started(), len(os.listdir('/proc/self/fd')))")
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if not os.path.exists("/usr/bin/setpriv"):
            pytest.skip("setpriv is not installed")
        prefix = ("/usr/bin/setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw", "--")
    env = {**os.environ, "PYTHONPATH": str(Path(synstart.__file__).parents[1])}
    baseline = subprocess.run([*prefix, sys.executable, "-c", "import os; "
                               "print(len(os.listdir('/proc/self/fd')))"], env=env,
                              capture_output=True, text=True, check=True, timeout=60)
    out = subprocess.run([*prefix, sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, timeout=60)
    assert out.stdout.split() == ["None", "None", baseline.stdout.strip()], out.stderr


def test_the_burst_is_the_sweeps() -> None:
    from vncaudit.discovery.syn import DEFAULT_SYN_RATE, TokenBucket

    assert DEFAULT_SYN_RATE == rawsyn.DEFAULT_SYN_RATE
    for rate in (0.1, 10, 2000, 50_000, 200_000, 1e7):
        early = min(synstart.EARLY_MAX, rawsyn.rate_burst(rate))
        assert early <= TokenBucket(rate).burst
