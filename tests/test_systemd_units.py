"""The systemd units in contrib/systemd: `systemd-analyze verify` accepts them, their hardening
scores "OK" or better, they run as the dedicated user with no capability, and the SYN drop-in
adds CAP_NET_RAW and nothing else.

`verify` checks that ExecStart names an executable: the units name /usr/bin/vncaudit (where a
package installs it), so the test points that at a stand-in in a temporary copy, changing
nothing else. The man page is not looked up (`--man=no`): it is installed by the package.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

UNITS = Path(__file__).resolve().parent.parent / "contrib" / "systemd"
SERVICES = ("vncaudit-watch.service", "vncaudit-watch-once.service", "vncaudit-serve.service")

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None and
                                not __import__("os").environ.get("CI"),
                                reason="systemd-analyze (Debian package systemd) not installed")


@pytest.fixture
def copies(tmp_path: Path) -> Path:
    stand_in = tmp_path / "vncaudit"
    stand_in.write_text("#!/bin/sh\nexec python3 -m vncaudit \"$@\"\n")
    stand_in.chmod(0o755)
    for unit in UNITS.iterdir():
        if unit.suffix in (".service", ".timer"):
            text = unit.read_text().replace("/usr/bin/vncaudit", str(stand_in))
            (tmp_path / unit.name).write_text(text)
    return tmp_path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemd-analyze", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def security(unit: Path) -> dict[str, Any]:
    run = analyze("security", "--offline=true", "--json=short", f"./{unit.name}",
                  cwd=unit.parent)
    assert run.returncode == 0, run.stderr
    return {item["name"]: item for item in json.loads(run.stdout)}


def test_units_verify(copies: Path) -> None:
    names = [f"./{n}" for n in (*SERVICES, "vncaudit-watch.timer")]
    run = analyze("verify", "--man=no", *names, cwd=copies)
    assert run.returncode == 0, run.stderr + run.stdout
    assert run.stderr.strip() == "", run.stderr


@pytest.mark.parametrize("name", SERVICES)
def test_units_are_hardened(copies: Path, name: str) -> None:
    text = (UNITS / name).read_text()
    for line in ("User=vncaudit", "ProtectSystem=strict", "NoNewPrivileges=yes",
                 "CapabilityBoundingSet=\n", "AmbientCapabilities=\n", "StateDirectory=vncaudit"):
        assert line in text + "\n", line
    run = analyze("security", "--offline=true", f"./{name}", cwd=copies)
    overall = run.stdout.strip().splitlines()[-1]
    level = float(overall.split("exposure level for")[1].split(":")[1].split()[0])
    assert level <= 2.0, overall  # systemd calls up to 3.9 "OK", 2.0 and below is good
    items = security(copies / name)
    caps = {k: v["set"] for k, v in items.items() if k.startswith("CapabilityBoundingSet")}
    assert caps and all(caps.values()), [k for k, v in caps.items() if not v]


def test_syn_drop_in_adds_only_cap_net_raw(copies: Path) -> None:
    drop_in = (UNITS / "syn-discovery.conf").read_text()
    base = (copies / "vncaudit-watch.service").read_text()
    syn = copies / "syn.service"
    syn.write_text(base + "\n" + drop_in)  # what systemd merges from the .d directory
    run = analyze("verify", "--man=no", "./syn.service", cwd=copies)
    assert run.returncode == 0, run.stderr
    before = security(copies / "vncaudit-watch.service")
    after = security(syn)
    changed = sorted(k for k in after if after[k]["set"] != before[k]["set"])
    assert "AmbientCapabilities=" in changed
    caps = [k for k in changed if k.startswith("CapabilityBoundingSet")]
    # systemd scores CAP_NET_RAW in one group with BIND_SERVICE and BROADCAST.
    assert caps == ["CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE|BROADCAST|RAW)"], caps
    assert set(changed) == {"AmbientCapabilities=", *caps}
    settings = [ln for ln in drop_in.splitlines() if ln and not ln.startswith(("#", "["))]
    assert settings == ["CapabilityBoundingSet=CAP_NET_RAW", "AmbientCapabilities=CAP_NET_RAW"]


def test_sysusers_file_names_the_units_user() -> None:
    line = next(ln for ln in (UNITS / "vncaudit.sysusers").read_text().splitlines()
                if ln and not ln.startswith("#"))
    assert line.split()[:2] == ["u", "vncaudit"]
