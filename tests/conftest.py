"""Shared pytest fixtures.

Real VNC servers (``tests/servers.py``) on loopback:

* session-scoped, one per kind, for READ-ONLY tests (do not exhaust TigerVNC's
  blacklist: every connection that ends before authentication counts, and 5 from
  one address block it — use ``vnc_server_factory`` for anything that probes a
  TigerVNC server more than a couple of times):
  ``tigervnc_none``, ``tigervnc_vncauth``, ``tigervnc_vencrypt``,
  ``tigervnc_default``, ``x11vnc_none``, ``x11vnc_password``, ``xtightvnc``,
  ``xtightvnc_none``;
* ``vnc_server_factory``: function-scoped; ``vnc_server_factory("tigervnc-none",
  desktop="x", geometry=(640, 480), extra_args=[...])`` starts a fresh server that
  is stopped at the end of the test. Servers that hold a session for the desktop's
  Accept (``vino``, ``tigervnc-queryconnect``, ``x0vncserver-queryconnect``) are only
  started through it: each probe leaves a prompt behind (vino keeps it, and the
  socket, until someone answers), so no test may inherit another's.

When a binary is missing the test is skipped, except under CI (env var ``CI``
set), where it FAILS: real-server tests must never silently skip in CI.
Mark real-server tests ``@pytest.mark.realserver``.

Marks that keep a test out of ``make check`` (the fast lane: ``-m "not slow and not
realserver and not netns and not load and not soak"``): a test file may set them itself;
``pytest_collection_modifyitems`` below also sets them by module (`_MODULE_MARKS`), by the
real-server fixtures a test uses, and by test name (`_SLOW_TESTS`: each took seconds of CPU),
so the fast lane stays fast without moving tests between files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import servers

VncServerFactory = Callable[..., servers.VncServer]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require_binaries(kind: str) -> None:
    """Skip (or fail under CI) when the binaries for *kind* are missing."""
    missing = servers.missing_binaries(kind)
    if missing:
        _unavailable(servers.ServerUnavailable(kind, missing))


def _unavailable(exc: servers.ServerUnavailable) -> None:
    msg = f"real VNC server not available: {exc}"
    if in_ci():
        pytest.fail(msg + " [CI is set: real-server tests must not skip]", pytrace=False)
    pytest.skip(msg)


def _start(kind: str, workdir: Path, **options: Any) -> servers.VncServer:
    require_binaries(kind)
    try:
        return servers.start(kind, workdir=workdir, **options)
    except servers.ServerUnavailable as exc:
        _unavailable(exc)
        raise  # unreachable; keeps type checkers happy


@pytest.fixture(scope="session")
def vnc_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Per-session directory for password files and server logs."""
    return tmp_path_factory.mktemp("vncservers")


def _session_server(kind: str, **options: Any) -> Any:
    @pytest.fixture(scope="session")
    def fixture(vnc_workdir: Path) -> Iterator[servers.VncServer]:
        srv = _start(kind, vnc_workdir, **options)
        try:
            yield srv
        finally:
            srv.stop()

    fixture.__doc__ = f"A session-wide {kind} server (read-only use)."
    return fixture


tigervnc_none = _session_server("tigervnc-none", desktop="tiger-none", geometry=(640, 480))
tigervnc_vncauth = _session_server("tigervnc-vncauth", desktop="tiger-vncauth")
tigervnc_vencrypt = _session_server("tigervnc-vencrypt", desktop="tiger-vencrypt")
tigervnc_default = _session_server("tigervnc-default", desktop="tiger-default")
x11vnc_none = _session_server("x11vnc-none", desktop="x11vnc-none", geometry=(640, 480))
x11vnc_password = _session_server("x11vnc-password", desktop="x11vnc-password")
xtightvnc = _session_server("xtightvnc", desktop="tight-vncauth")
xtightvnc_none = _session_server("xtightvnc-none", desktop="tight-none", geometry=(640, 480))


@pytest.fixture
def vnc_server_factory(vnc_workdir: Path) -> Iterator[VncServerFactory]:
    """Start fresh servers of any kind; all are stopped when the test ends."""
    started: list[servers.VncServer] = []

    def factory(kind: str, **options: Any) -> servers.VncServer:
        srv = _start(kind, vnc_workdir, **options)
        started.append(srv)
        return srv

    try:
        yield factory
    finally:
        for srv in reversed(started):
            srv.stop()


@pytest.fixture
def paint_root() -> Callable[[servers.VncServer, str], None]:
    """``paint_root(server, "red")``: fill the server's X root window (xsetroot)."""
    if shutil.which("xsetroot") is None:
        _unavailable(servers.ServerUnavailable("xsetroot", ["xsetroot"]))
    return servers.paint_root


_PROBE_CACHE: dict[tuple[str, int], Any] = {}


@pytest.fixture(scope="session")
def probe_once() -> Callable[[servers.VncServer], Any]:
    """``probe_once(server)``: the probe's result for a session server, probed only once.

    TigerVNC blacklists an address after 5 connections that end before authentication, so the
    session-wide password-protected servers must not be probed by every test that reads them.
    """
    import asyncio

    from vncaudit.models import Target
    from vncaudit.probe import probe

    def run(server: servers.VncServer) -> Any:
        key = (server.host, server.port)
        if key not in _PROBE_CACHE:
            _PROBE_CACHE[key] = asyncio.run(probe(Target(server.host, server.port)))
        return _PROBE_CACHE[key]

    return run


@pytest.fixture(autouse=True)
def _private_store(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test (and every `vncaudit` it runs) writes to its own store, never the user's."""
    monkeypatch.setenv("VNCAUDIT_DB", str(tmp_path_factory.mktemp("store") / "vncaudit.db"))


# Whole modules: the Dask clusters, Chromium, property-based fuzzing, schema fuzzing of the
# API, and the load and soak tests.
_MODULE_MARKS: dict[str, tuple[str, ...]] = {
    "test_cluster": ("slow",),
    "test_rfb_fuzz": ("slow",),
    "test_report_html_browser": ("slow",),
    "test_web_browser": ("slow",),
    "test_web_schemathesis": ("slow",),
    "test_systemd_units": ("slow",),
    "test_cli": ("slow",),  # command-line runs in subprocesses
    "test_cli_startup": ("slow",),  # start-up times of fresh processes
    "test_watch_errors": ("slow",),  # watch command lines in subprocesses
    "test_web_deploy": ("slow",),  # `vncaudit serve` in subprocesses, behind a real proxy
    "test_cli_stream": ("slow",),  # scans in subprocesses, read while they run
    "test_web_load": ("load",),
    "test_soak": ("soak",),
}
# Tests that start a real VNC server (tests/servers.py) through these fixtures.
_REAL_SERVER_FIXTURES = frozenset({
    "tigervnc_none", "tigervnc_vncauth", "tigervnc_vencrypt", "tigervnc_default", "x11vnc_none",
    "x11vnc_password", "xtightvnc", "xtightvnc_none", "vnc_server_factory", "probe_once",
})
# Single tests of otherwise fast modules that each took a second or more in a `make check`
# run (command-line subprocesses, servers, kill and restart loops, many processes or threads,
# property-based searches, DNS servers answering slowly on purpose).
_SLOW_TESTS = frozenset({
    "test_a_huge_pattern_is_intervals_not_addresses",
    "test_a_sharded_scan_ships_the_ledger_s_decisions",
    "test_a_store_on_a_read_only_mount_is_one_line_and_no_connection",
    "test_any_expression_parses_or_is_a_usage_error",
    "test_any_payload_survives_json",
    "test_arbitrary_bytes_only_protocol_errors",
    "test_axfr_refused_falls_back_to_the_wordlist",
    "test_bad_input_is_one_error_line",
    "test_bad_monitors_setting_is_one_line",
    "test_bash_completion_of_commands_options_and_formats",
    "test_binary_reason_is_escaped_and_bounded_everywhere",
    "test_blocks_hold_exactly_the_targets_of_the_walk",
    "test_check_table_prints_saved_views_as_text",
    "test_cli_refuses_an_unsafe_trusted_value_before_doing_anything",
    "test_cli_resumes_a_scan_stored_in_the_unversioned_form",
    "test_cli_scans_an_nmap_pattern_and_refuses_a_bad_one",
    "test_cli_unwritable_output_file_is_one_line_and_keeps_the_results",
    "test_cname_wildcard_is_detected_by_its_target",
    "test_concurrency_is_respected_server_side",
    "test_concurrent_processes_never_both_spend_the_last_connection",
    "test_connect_discovery_finds_exactly_the_live_set",
    "test_console_entry_point_prints_one_line",
    "test_ctrl_c_outside_a_scan_is_one_line_exit_130",
    "test_diff_dash_o_json_and_the_json_alias_agree",
    "test_diff_to_previous_scan_never_shows_another_clients_scan",
    "test_domain_with_subdomain_discovery",
    "test_each_shard_spreads_over_the_whole_space",
    "test_every_command_with_a_machine_format_takes_dash_o",
    "test_every_format_of_an_empty_scan_and_an_ipv6_host",
    "test_format_ports_round_trip",
    "test_formats_render_what_assess_found",
    "test_fragmentation_does_not_change_events",
    "test_garbage_never_escapes_as_another_exception",
    "test_health_openapi_and_security_headers",
    "test_help_at_80_columns_keeps_examples_and_whole_first_sentences",
    "test_history_diff_to_previous_scan",
    "test_html_escapes_hostile_strings",
    "test_html_is_self_contained_with_a_strict_policy",
    "test_html_lists_hosts_found_by_dns",
    "test_html_screenshot_missing_or_not_png_is_said_not_embedded",
    "test_html_summary_counts_worst_first_and_cards",
    "test_install_completion_for_bash",
    "test_interval_arithmetic_matches_sets",
    "test_kill9_mid_write_then_resume_equals_uninterrupted",
    "test_kill9_with_an_open_batch_loses_only_that_batch",
    "test_kill9_with_time_based_commits",
    "test_kill_9_then_resume_equals_uninterrupted",
    "test_local_report_write_failing_is_exit_3",
    "test_manpage_command_writes_the_same_page",
    "test_many_processes_opening_a_fresh_file_at_once",
    "test_monitors_api_needs_a_token_and_is_documented",
    "test_no_rule_raises_and_findings_keep_their_promises",
    "test_one_client_cannot_hold_every_worker",
    "test_one_store_shared_by_threads",
    "test_one_version_source",
    "test_other_states_and_web_transport_in_every_format",
    "test_out_of_descriptors_slows_down_loses_nothing",
    "test_page_and_cycles_hidden_from_other_addresses",
    "test_parse_ports_never_crashes",
    "test_password_file_and_environment",
    "test_public_history_never_publishes_the_operators_cli_scans",
    "test_queue_full_answers_503",
    "test_rate_is_respected_server_side",
    "test_reader_while_writer_process_writes",
    "test_readme_serve_examples_say_what_a_test_on_one_machine_needs",
    "test_results_and_diff_commands",
    "test_rollback_only_restores_private_backups_with_their_own_files",
    "test_scan_deadline_stops_a_long_scan",
    "test_scan_domain_skips_names_no_target_parser_takes",
    "test_scan_no_auth_server_end_to_end",
    "test_second_resolution_never_reaches_the_engine",
    "test_serve_port_in_use_is_one_line_exit_3",
    "test_serve_runs_the_monitors_and_shows_them",
    "test_serve_stops_on_ctrl_c_without_an_error",
    "test_serve_without_the_web_extra_says_how_to_get_it",
    "test_shards_are_disjoint_and_cover",
    "test_signal_during_scan_stores_and_prints_resume",
    "test_subdomains_table_prints_zone_names_as_text",
    "test_syn_without_raw_socket_rights_is_one_line",
    "test_unix_commands_are_valid_shell",
    "test_unknown_discovery_mode_is_usage_error",
    "test_url_and_host_port_get_the_same_words",
    "test_verdicts_are_committed_while_the_results_pause",
    "test_vncaudit_serve_command",
    "test_whatever_passes_the_check_is_inert_in_a_shell",
    "test_wildcard_zone_gives_no_flood_but_keeps_real_records",
})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__ if isinstance(item, pytest.Function) else ""
        for mark in _MODULE_MARKS.get(module, ()):
            item.add_marker(mark)
        if _REAL_SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker("realserver")
        if getattr(item, "originalname", item.name) in _SLOW_TESTS:
            item.add_marker("slow")
