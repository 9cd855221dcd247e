"""Install and packaging: the README's commands, the Makefile, the lock file, the one version.

The README's first command itself runs in `.ci/run` on Debian's own python3 in a clean
environment; these tests keep the pieces that make that work from drifting.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / ".ci"))

import readme_command  # noqa: E402


def _pyproject() -> dict[str, object]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _requirements(extras: tuple[str, ...] = ("web", "cluster", "test")) -> list[Requirement]:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    out = [Requirement(text) for text in project["dependencies"]]
    for extra in extras:
        out += [Requirement(text) for text in project["optional-dependencies"][extra]]
    return [r for r in out if canonicalize_name(r.name) != "vncaudit"]


def _lock() -> dict[str, tuple[Version, list[str]]]:
    """name -> (pinned version, its hashes), for the entries whose marker fits this Python."""
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    out: dict[str, tuple[Version, list[str]]] = {}
    for entry in re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2]):
        head = entry.split("\\", 1)[0].strip()
        req = Requirement(head)
        if req.marker is not None and not req.marker.evaluate():
            continue
        (spec,) = req.specifier
        assert spec.operator == "==", head
        out[canonicalize_name(req.name)] = (Version(spec.version),
                                            re.findall(r"--hash=sha256:([0-9a-f]{64})", entry))
    return out


def test_readme_first_command_uses_pipx_or_a_venv() -> None:
    """Debian 12, Ubuntu 24.04 and Kali refuse `pip install` into their python3 and have no
    `python`: the first command installs into an environment of its own, and root is told
    how to reach that install (`sudo vncaudit` does not find it)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first, tests = readme_command.quick_start_blocks(readme)[:2]
    assert "pipx install ." in first or re.search(r"python3 -m venv \S+ && \S+/bin/pip", first)
    assert not re.search(r"(^|[;&|]\s*)(pip3?|python) ", first), first
    assert "apt install pipx" in first  # from the distribution, as written for a fresh Debian
    assert "vncaudit scan 127.0.0.1" in first
    assert tests == "make test"
    assert "sudo ~/.local/bin/vncaudit" in readme  # root reaches the same install
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "readme_command.py 1" in ci and "readme_command.py 2" in ci
    assert "env -i" in ci and "PIP_CONFIG_FILE=/dev/null" in ci and ".pyenv" not in ci


def test_make_runs_every_tool_from_the_venv() -> None:
    """`make test` / `make check` never call a bare `python` (absent on Debian) nor install
    into the interpreter itself (refused there): every tool runs from the venv."""
    dry = subprocess.run(["make", "-n", "-s", "test", "check", "PYTHON=python3.99"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    commands = [line.strip() for line in dry.splitlines() if line.strip()]
    tool_runs = re.findall(r"(\S+) -m (ruff|mypy|pytest)\b", dry)
    assert len(tool_runs) == 6, commands
    assert {python for python, _ in tool_runs} == {".venv/bin/python"}, tool_runs
    assert not any(re.match(r"(python|pip3?) ", c) for c in commands), commands
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert "--require-hashes" in makefile and "PYTHON ?= python3" in makefile


def test_make_refuses_an_old_interpreter_in_one_line(tmp_path: Path) -> None:
    fake = tmp_path / "python3.10"
    fake.write_text("#!/bin/sh\nif [ \"$1\" = -c ]; then case \"$2\" in *platform*) "
                    "echo 3.10.13;; *) exit 1;; esac; fi\n")
    fake.chmod(0o755)
    out = subprocess.run(["make", "-s", "venv", f"PYTHON={fake}", f"VENV={tmp_path}/v"],
                         cwd=ROOT, capture_output=True, text=True)
    assert out.returncode != 0
    assert "Python 3.10.13; vncaudit needs 3.11 or newer" in out.stderr
    assert not (tmp_path / "v").exists()


def test_dependencies_are_ranges_not_pins() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    texts = [*project["dependencies"], *(t for group in project["optional-dependencies"].values()
                                         for t in group)]
    for text in texts:
        req = Requirement(text)
        assert not any(s.operator in ("==", "===") for s in req.specifier), text
        if canonicalize_name(req.name) != "vncaudit":
            assert any(s.operator == ">=" for s in req.specifier), f"{text}: no lower bound"


def test_lock_pins_every_dependency_in_range_with_hashes() -> None:
    """requirements.lock (what CI and `make test` install, hash-checked) has every dependency
    of pyproject.toml, at a version inside its range: a dependency added without `make lock`
    fails here, not in a user's install."""
    lock = _lock()
    env = default_environment()
    for req in _requirements():
        if req.marker is not None and not req.marker.evaluate(env | {"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        assert name in lock, f"{req} is not in requirements.lock: run `make lock`"
        version, hashes = lock[name]
        assert req.specifier.contains(version, prereleases=True), \
            f"requirements.lock has {name}=={version}, outside {req}: run `make lock`"
        assert hashes, f"{name}: no hash in requirements.lock"
        for extra in req.extras:  # dask[distributed]
            assert canonicalize_name(extra) in lock or extra == "distributed"
    assert "distributed" in lock and "setuptools" in lock and "wheel" in lock
    for name, (_, hashes) in lock.items():
        assert hashes, f"{name}: no hash in requirements.lock"


def test_installed_versions_are_the_locked_ones() -> None:
    """The tests run on what the lock says (`make test` installs it into .venv)."""
    if not (Path(sys.prefix) / ".vncaudit-stamp").exists():
        pytest.skip("not running in the venv `make test` builds from requirements.lock")
    for name, (version, _) in _lock().items():
        assert Version(metadata.version(name)) == version, name


def test_one_version_source() -> None:
    """The version lives in pyproject.toml only; `--version`, scan records and reports read
    it back from the package metadata."""
    import vncaudit

    declared = _pyproject()["project"]["version"]  # type: ignore[index]
    assert vncaudit.__version__ == metadata.version("vncaudit") == declared
    for path in (ROOT / "src").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"__version__\s*=\s*['\"]\d+\.\d", text), path
        assert f'"{declared}"' not in text, f"{path} spells the version out"
    out = subprocess.run([sys.executable, "-m", "vncaudit", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out == f"vncaudit {declared}\n"


def test_serve_without_the_web_extra_says_how_to_get_it() -> None:
    code = ("import sys; sys.modules['fastapi'] = None; sys.argv = ['vncaudit', 'serve']; "
            "from vncaudit.cli import main; main()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 3
    assert out.stderr.count("\n") == 1, out.stderr
    assert "vncaudit serve needs the 'web' extra (fastapi not installed)" in out.stderr
    assert "pipx install --force '.[web]'" in out.stderr


def test_web_and_cluster_are_extras() -> None:
    project = _pyproject()["project"]
    assert isinstance(project, dict)
    core = {canonicalize_name(Requirement(t).name) for t in project["dependencies"]}
    assert not core & {"fastapi", "uvicorn", "python-multipart", "prometheus-client", "dask"}
    extras = project["optional-dependencies"]
    assert {canonicalize_name(Requirement(t).name) for t in extras["web"]} >= {
        "fastapi", "uvicorn"}
    assert any(t.startswith("dask[distributed]") for t in extras["cluster"])
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for text in ("--workers", "--cluster", "'.[web,cluster]'", "`cluster` extra", "make lock"):
        assert text in readme, text
