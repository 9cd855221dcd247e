"""The layers of the package import only what docs/design.md §3 allows, no module uses
another's private (`_`-prefixed) names, and no function is over 80 lines unless its docstring
says why.

Reads every module of `src/vncaudit` with `ast` (nothing is imported): its imports at module
level and inside functions, and `importlib.import_module("vncaudit.…")` calls with a literal
name. Imports under `if TYPE_CHECKING:` name a type for an annotation only and are not counted
for the layers (they are for private names: a type another module names is public too).
Each rule below is the "Must not" line of a module's docstring, and the table in
docs/design.md §3 says the same in words.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "vncaudit"

# The data types every layer may use: results and their typed payloads, and the errors.
DATA = ("basics", "models", "payloads", "exceptions")

# module (or package) -> what it may import of vncaudit besides its own package. The most
# specific entry wins; a module without an entry falls under LIBRARY_DEFAULT.
ALLOWED: dict[str, tuple[str, ...]] = {
    "basics": (),
    "models": ("basics", "payloads"),
    "payloads": (),
    "exceptions": (),
    "display": (),
    "tomlfile": (),
    "jsontext": (),
    "desktop": (),
    "vncauth": (),
    "firewall": (),
    "rfb": DATA,
    "framebuffer": (*DATA, "rfb"),
    "fingerprint": DATA,
    "assess": (*DATA, "rfb", "fingerprint", "desktop", "display"),
    "remedies": DATA,
    "diff": DATA,
    "targets": DATA,
    "rawsyn": (),
    "rawbatch": ("rawsyn",),
    "routetable": ("rawsyn",),
    "synbulk": ("rawsyn", "rawbatch", "routetable"),
    "synstart": ("rawsyn", "targets.permutation", "synbulk"),
    "connstart": ("admission", "store.schema", "synstart"),
    "discovery": (*DATA, "rawsyn", "rawbatch", "routetable", "synstart", "connstart"),
    "subdomains": ("exceptions",),
    "store": (*DATA, "diff", "jsontext"),
    "pump": (*DATA, "rfb"),
    "probe_options": ("pump", "rfb"),
    "probe": (*DATA, "rfb", "pump", "probe_options"),
    "websocket": (*DATA, "rfb", "pump", "probe"),
    "admission": (),
    "blacklists": (*DATA, "fingerprint", "admission"),
    "budget": (*DATA, "fingerprint", "blacklists", "store", "admission"),
    "active": (*DATA, "rfb", "framebuffer", "vncauth", "pump", "desktop"),
    "active.transport": ("models", "pump"),
    "report": (*DATA, "desktop", "display", "remedies", "jsontext"),
    "engine": (*DATA, "targets", "discovery", "probe", "probe_options", "budget", "assess"),
    "spec": (*DATA, "targets", "discovery", "engine", "assess"),
    "cluster": (*DATA, "targets", "engine", "store", "budget", "assess"),
    "local": (*DATA, "rfb", "probe", "assess", "budget", "firewall"),
    "harden": (*DATA, "local", "firewall", "remedies"),
    "web.policy": ("exceptions", "targets"),
    "__main__": ("cli",),
}

# Layers that may import anything of the package except these.
ANYTHING_BUT: dict[str, tuple[str, ...]] = {
    "cli": (),
    "web": ("cli",),
    "watch": ("cli", "web"),
}
LIBRARY_DEFAULT: tuple[str, ...] = ("cli", "web", "watch")

WEB_FRAMEWORK = ("web.app", "web.deps", "web.routes")

# Third-party modules, and the layers that may import them.
ONLY_IN: dict[str, tuple[str, ...]] = {
    "typer": ("cli",),
    "click": ("cli",),
    "rich": ("cli",),
    # The rest of web/ (jobs, policy, security, settings, views, metrics) stays free of the
    # framework, so it is testable without an app.
    "fastapi": WEB_FRAMEWORK,
    "starlette": WEB_FRAMEWORK,
    "pydantic": WEB_FRAMEWORK,
    "uvicorn": ("cli", "web"),
}

# Modules that do no I/O: no sockets, TLS, event loop, processes, HTTP, mail or DNS.
NO_IO = ("basics", "models", "probe_options", "exceptions", "rfb", "framebuffer",
         "fingerprint", "assess", "desktop", "display", "tomlfile", "jsontext", "vncauth",
         "diff", "remedies", "report",
         "firewall._model", "firewall.iptables", "firewall.nft", "firewall.ufw", "web.policy",
         "targets.permutation")
IO_MODULES = frozenset({"socket", "ssl", "asyncio", "select", "selectors", "subprocess", "http",
                        "urllib", "smtplib", "httpx", "dns", "uvloop", "psutil"})

# The store uses the standard library only (docs/design.md §10).
STDLIB_ONLY = ("store",)


@dataclass(frozen=True)
class Import:
    module: str  # dotted name as imported ("vncaudit.rfb", "socket")
    line: int


@dataclass(frozen=True)
class Module:
    name: str  # "rfb", "active.transport", "vncaudit" for the package itself
    path: Path
    imports: tuple[Import, ...]


def _name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts) or "vncaudit"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node under `node`, leaving out the bodies of `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for other in child.orelse:
                yield other
                yield from _walk(other)
            continue
        yield child
        yield from _walk(child)



def _from_module(node: ast.ImportFrom, package: list[str]) -> str:
    """The absolute module name of `from X import ...` written in `package`."""
    if not node.level:
        return node.module or ""
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))

def _imports(path: Path, name: str, known: set[str]) -> tuple[Import, ...]:
    """The imports of the module `name` (read from `path`); `known`: every module's full name,
    to tell `from vncaudit import rfb` (a module) from `from vncaudit.rfb import X`."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    parts = [] if name == "vncaudit" else name.split(".")
    package = ["vncaudit", *(parts if path.name == "__init__.py" else parts[:-1])]
    found: list[Import] = []
    for node in _walk(tree):
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = _from_module(node, package)
            for alias in node.names:
                # `from vncaudit import rfb` imports the module vncaudit.rfb.
                full = f"{module}.{alias.name}"
                found.append(Import(full if full in known else module, node.lineno))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)):
            found.append(Import(node.args[0].value, node.lineno))
    return tuple(found)


def _modules() -> list[Module]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {"vncaudit." + _name(p) if _name(p) != "vncaudit" else "vncaudit" for p in paths}
    return [Module(_name(p), p, _imports(p, _name(p), known)) for p in paths]


MODULES = _modules()


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _rule(name: str, table: dict[str, tuple[str, ...]]) -> str | None:
    """The most specific key of `table` that `name` falls under."""
    keys = [key for key in table if _under(name, key)]
    return max(keys, key=len) if keys else None


def _internal(module: Module) -> Iterator[tuple[str, int]]:
    """The package modules `module` imports, relative to the package ("rfb"), outside its
    own top-level package."""
    own = module.name.split(".")[0]
    for imp in module.imports:
        if imp.module == "vncaudit":
            if module.name != "vncaudit":
                yield "vncaudit", imp.line
            continue
        if not imp.module.startswith("vncaudit."):
            continue
        target = imp.module.removeprefix("vncaudit.")
        if target.split(".")[0] != own:
            yield target, imp.line


def _violations(module: Module) -> list[str]:
    where = f"{module.path.relative_to(PACKAGE.parents[1])}"
    problems: list[str] = []
    allowed_key = _rule(module.name, ALLOWED)
    but_key = _rule(module.name, ANYTHING_BUT)
    for target, line in _internal(module):
        if target == "vncaudit":
            # The package root loads only `models` when imported (`scan` and `__version__` are
            # looked up on first use), so importing it is importing `models`.
            target = "models"
        if allowed_key is not None and (but_key is None or len(allowed_key) >= len(but_key)):
            if not any(_under(target, ok) for ok in ALLOWED[allowed_key]):
                problems.append(f"{where}:{line}: `{module.name}` imports `{target}` "
                                f"(allowed: {', '.join(ALLOWED[allowed_key]) or 'nothing'})")
        else:
            banned = ANYTHING_BUT[but_key] if but_key is not None else LIBRARY_DEFAULT
            if any(_under(target, bad) for bad in banned):
                problems.append(f"{where}:{line}: `{module.name}` imports `{target}` "
                                f"(must not import {', '.join(banned)})")
    for imp in module.imports:
        top = imp.module.split(".")[0]
        layers = ONLY_IN.get(top)
        if layers is not None and not any(_under(module.name, layer) for layer in layers):
            problems.append(f"{where}:{imp.line}: `{module.name}` imports `{top}` "
                            f"(only {', '.join(layers)} may)")
        if any(_under(module.name, m) for m in NO_IO) and top in IO_MODULES:
            problems.append(f"{where}:{imp.line}: `{module.name}` must do no I/O but imports "
                            f"`{top}`")
        if (any(_under(module.name, m) for m in STDLIB_ONLY) and top != "vncaudit"
                and top not in sys.stdlib_module_names):
            problems.append(f"{where}:{imp.line}: `{module.name}` may use the standard "
                            f"library only but imports `{top}`")
    return problems


def test_the_package_is_read() -> None:
    names = {m.name for m in MODULES}
    assert {"rfb", "probe", "engine", "store", "cli", "web", "assess.rules"} <= names
    rfb = next(m for m in MODULES if m.name == "rfb")
    assert {"vncaudit.models", "vncaudit.exceptions"} <= {i.module for i in rfb.imports}


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_layer_imports(module: Module) -> None:
    problems = _violations(module)
    assert not problems, "\n".join(problems)


def test_the_rules_name_modules() -> None:
    """A rule whose subject matches no module checks nothing: each must name real modules
    (the allowed targets may name a module still to come, such as `payloads`)."""
    names = {m.name for m in MODULES}
    known = {*names, "payloads"}
    for key in (*ALLOWED, *ANYTHING_BUT, *NO_IO, *STDLIB_ONLY):
        assert any(_under(n, key) for n in known), key
    for allowed in ALLOWED.values():
        for target in allowed:
            assert any(_under(n, target) for n in known), target


def _fake(name: str, source: str, tmp_path: Path) -> Module:
    path = tmp_path / "m.py"
    path.write_text(source)
    known = {"vncaudit." + m.name for m in MODULES}
    return Module(name, PACKAGE / (name.replace(".", "/") + ".py"), _imports(path, name, known))


def test_the_rules_catch_what_they_forbid(tmp_path: Path) -> None:
    """The checker itself: each kind of breach is reported, a type-only import is not."""
    rfb = _fake("rfb", "import socket\nfrom vncaudit import probe\n", tmp_path)
    assert len(_violations(rfb)) == 2
    store = _fake("store.database", "import numpy\nfrom vncaudit.engine import scan\n",
                  tmp_path)
    assert len(_violations(store)) == 2
    engine = _fake("engine", "import rich\nfrom vncaudit.cli import app\n", tmp_path)
    assert len(_violations(engine)) == 2
    lazy = _fake("report.html", "import importlib\nimportlib.import_module('vncaudit.store')\n",
                 tmp_path)
    assert len(_violations(lazy)) == 1
    typed = _fake("store.database", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                  "    from vncaudit.discovery import Marks\n", tmp_path)
    assert _violations(typed) == []
    web = _fake("web.jobs", "from vncaudit.cli import app\nimport fastapi\n", tmp_path)
    assert len(_violations(web)) == 2


def _private_uses(path: Path, name: str, known: set[str]) -> list[str]:
    """Where the module `name` (read from `path`) uses a `_`-prefixed name of another module of
    the package: `from vncaudit.x import _y` (also relative), or `x._y` with `x` bound to a
    package module by an import. A name another module uses is API: it drops the underscore
    (docs/design.md §3)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    parts = [] if name == "vncaudit" else name.split(".")
    package = ["vncaudit", *(parts if path.name == "__init__.py" else parts[:-1])]
    itself = "vncaudit" if name == "vncaudit" else f"vncaudit.{name}"
    root = PACKAGE.parents[1]
    where = path.relative_to(root) if path.is_relative_to(root) else path

    def private(attr: str) -> bool:
        return attr.startswith("_") and not attr.startswith("__")

    found: list[tuple[int, str]] = []
    modules: dict[str, str] = {}  # local name -> package module it is bound to
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "vncaudit" or alias.name.startswith("vncaudit."):
                    modules[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom):
            module = _from_module(node, package)
            if module != "vncaudit" and not module.startswith("vncaudit."):
                continue
            for alias in node.names:
                if f"{module}.{alias.name}" in known:
                    modules[alias.asname or alias.name] = f"{module}.{alias.name}"
                if private(alias.name) and module != itself:
                    found.append((node.lineno, f"imports `{alias.name}` from `{module}`"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and private(node.attr):
            owner = modules.get(ast.unparse(node.value))
            if owner is not None and owner != itself:
                found.append((node.lineno, f"uses `{node.attr}` of `{owner}`"))
    return [f"{where}:{line}: {what}" for line, what in sorted(found)]


def _known() -> set[str]:
    return {"vncaudit." + m.name if m.name != "vncaudit" else "vncaudit" for m in MODULES}


@pytest.mark.parametrize("module", MODULES, ids=[m.name for m in MODULES])
def test_no_module_uses_another_modules_private_names(module: Module) -> None:
    problems = _private_uses(module.path, module.name, _known())
    assert not problems, "\n".join(problems)


# The tests, the fuzz harness and the benchmarks use the package as any other caller does: a
# helper a test needs is public in its module.
CALLERS = sorted(p for top in ("tests", "fuzz", "bench")
                 for p in (PACKAGE.parents[1] / top).rglob("*.py"))


@pytest.mark.parametrize("path", CALLERS, ids=[p.name for p in CALLERS])
def test_no_test_uses_a_private_name_of_the_package(path: Path) -> None:
    problems = _private_uses(path, "tests." + path.stem, _known())
    assert not problems, "\n".join(problems)


def test_the_private_name_check_catches_what_it_forbids(tmp_path: Path) -> None:
    """The checker itself: each way of reaching a private name of another module is reported;
    a module's own names, dunders and public names are not."""
    path = tmp_path / "m.py"
    path.write_text("from vncaudit.rfb import _NeedData, RfbClient\n"
                    "from ..store import _write\n"
                    "from vncaudit import probe\n"
                    "import vncaudit.engine as engine\n"
                    "from vncaudit import __version__\n"
                    "from vncaudit.targets.space import _own\n"
                    "probe._connect()\n"
                    "engine._Pipeline\n"
                    "probe.connect()\n"
                    "other._private()\n")
    found = _private_uses(path, "targets.space", _known())
    assert [line.split(": ", 1)[1] for line in found] == [
        "imports `_NeedData` from `vncaudit.rfb`",
        "imports `_write` from `vncaudit.store`",
        "uses `_connect` of `vncaudit.probe`",
        "uses `_Pipeline` of `vncaudit.engine`",
    ]


# -- function length ------------------------------------------------------------------------------

MAX_FUNCTION_LINES = 80
# A longer function says why in its docstring, in a paragraph that starts with this word. In
# a typer command it goes after a form feed, which --help and the man page leave out.
LENGTH_REASON = "Length:"
REASON_WORDS = 6  # a reason, not the word alone


def _long_functions(source: str, where: str) -> list[str]:
    """The functions (and methods, nested ones too) over MAX_FUNCTION_LINES lines, from `def`
    to their last line, whose docstring does not say why."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        assert node.end_lineno is not None
        lines = node.end_lineno - node.lineno + 1
        if lines <= MAX_FUNCTION_LINES:
            continue
        reason = (ast.get_docstring(node) or "").partition(LENGTH_REASON)[2]
        if len(reason.split()) < REASON_WORDS:
            found.append(f"{where}:{node.lineno}: {node.name} is {lines} lines; split it, or "
                         f"say why in its docstring ({LENGTH_REASON} ...)")
    return found


def test_no_function_is_over_80_lines_unless_its_docstring_says_why() -> None:
    found = [problem for path in sorted(PACKAGE.rglob("*.py"))
             for problem in _long_functions(path.read_text("utf-8"),
                                            str(path.relative_to(PACKAGE.parent)))]
    assert not found, "\n".join(found)


def test_the_length_check_catches_a_long_function() -> None:
    """The checker itself: 81 lines without a reason are reported (a function, an async
    method, the word alone); 80 lines, or a docstring that says why, are not."""
    def function(lines: int, doc: str = "", head: str = "def f() -> None:",
                 indent: str = "    ") -> str:
        body = [f'{indent}"""{doc}"""'] if doc else []
        body += [f"{indent}x{i} = {i}" for i in range(lines - 1 - len(body))]
        return "\n".join([indent[4:] + head, *body]) + "\n"

    assert _long_functions(function(80), "m.py") == []
    assert [p.split(": ", 1)[1] for p in _long_functions(function(81), "m.py")] == [
        "f is 81 lines; split it, or say why in its docstring (Length: ...)"]
    method = "class C:\n" + function(90, head="async def g(self) -> None:", indent=" " * 8)
    assert [p.split(":")[1] for p in _long_functions(method, "m.py")] == ["2"]
    assert _long_functions(function(81, "Do it.\n\nLength: long."), "m.py") != []
    why = "Do it.\n\f\nLength: the declarations are the interface typer reads."
    assert _long_functions(function(81, why), "m.py") == []
