"""`ScanSpec`: every setting of one scan, checked once, stored with the scan and read back on
resume.

Owns: the settings (targets and their inputs, ports, exclusions, pace, discovery mode, probe
and active-check flags, grading exposure), their validation (`UsageError`, one line), their
JSON form in the store (``scans.options``, `SPEC_VERSION`; the unversioned form that
``vncaudit scan`` wrote before is read too), and turning them into the engine's options and the
target space. Must not: touch the network or the store, read files (the runner does), or
hold secrets: a `--password` is never part of a spec, only that one was given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Final

from vncaudit.discovery import Mode
from vncaudit.engine import DEFAULT_CONCURRENCY
from vncaudit.exceptions import UsageError

if TYPE_CHECKING:
    from vncaudit.targets import TargetSpace

__all__ = ["DEFAULT_CONCURRENCY", "DEFAULT_PORTS", "DEFAULT_TIMEOUT", "SPEC_VERSION",
           "ActiveSpec", "ScanSpec"]

SPEC_VERSION: Final = 2
"""The JSON form's version (``spec_version``). 1: no ``spec_version`` key, no active-check or
web settings (resumed with them off and web detection on, as ``vncaudit scan`` ran them)."""

DEFAULT_PORTS: Final = "5800,5900-5910"
DEFAULT_TIMEOUT: Final = 5.0
MAX_PASSWORD_ATTEMPTS: Final = 4  # per server: below every lockout threshold we know


@dataclass(frozen=True)
class ActiveSpec:
    """The opt-in active checks. All off by default: nothing active unless asked for."""

    screenshot: bool = False
    screenshot_dir: str | None = None  # absolute; where PNGs go (None: not saved)
    check_passwords: bool = False
    wordlist: str | None = None  # a file of passwords for check_passwords (None: built-in)
    max_attempts: int = 3
    show_passwords: bool = False  # found passwords stored unmasked
    active_checks: bool = False  # auth-bypass (un-offered None) and honeypot checks
    uses_password: bool = False  # a known password was given (the password is not stored)

    def __post_init__(self) -> None:
        if self.wordlist is not None and not self.check_passwords:
            # Read and then ignored, a list would let the user believe it had been tried.
            raise UsageError("--wordlist is the password list of --check-passwords; add "
                             "--check-passwords (or leave --wordlist out)")
        if not 1 <= self.max_attempts <= MAX_PASSWORD_ATTEMPTS:
            raise UsageError(f"--max-attempts must be 1 to {MAX_PASSWORD_ATTEMPTS}, "
                             f"not {self.max_attempts}")

    @property
    def enabled(self) -> bool:
        return (self.screenshot or self.check_passwords or self.active_checks
                or self.uses_password)


@dataclass(frozen=True)
class ScanSpec:
    """One scan's settings. Build it with keywords; it checks itself (`UsageError`).

    Targets: `expressions` (addresses, networks, ranges, host names), the lines of
    `input_files`, the hosts of `nmap_xml` / `masscan` files, minus `excludes` and the lines of
    `exclude_files`, on `ports` (the port syntax of `vncaudit.targets.parse_ports`). Host names
    in `resolved` use the addresses recorded there instead of DNS (names `domains` discovery
    found, so a resume scans what discovery saw). `seed` fixes the order; a new scan draws one.
    """

    expressions: tuple[str, ...] = ()
    ports: str = DEFAULT_PORTS
    input_files: tuple[str, ...] = ()
    nmap_xml: tuple[str, ...] = ()
    masscan: tuple[str, ...] = ()
    excludes: tuple[str, ...] = ()
    exclude_files: tuple[str, ...] = ()
    allow_special: bool = False
    domains: tuple[str, ...] = ()  # --domain: where the names of `resolved` came from
    resolver: str | None = None  # the DNS server domain discovery used
    resolved: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, addresses) pairs
    seed: int | None = None
    timeout: float = DEFAULT_TIMEOUT
    concurrency: int = DEFAULT_CONCURRENCY
    rate: float | None = None
    discovery: Mode = Mode.CONNECT
    retries: int | None = None
    no_init: bool = False
    web: bool = True  # look for VNC web front ends on web ports that did not answer RFB
    active: ActiveSpec = field(default_factory=ActiveSpec)
    exposure: str | None = None  # grade as reachable from here (assess.Exposure); None: by address
    risk_lockout: bool = False  # connect even where the connection arms a blacklist (budget)

    def __post_init__(self) -> None:
        for name in ("expressions", "input_files", "nmap_xml", "masscan", "excludes",
                     "exclude_files", "domains"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise UsageError(f"scan setting {name} must be a list of strings")
            object.__setattr__(self, name, tuple(value))
        object.__setattr__(self, "resolved", tuple(
            (str(n), tuple(str(a) for a in addrs)) for n, addrs in self.resolved))
        try:
            object.__setattr__(self, "discovery", Mode(self.discovery))
        except ValueError:
            raise UsageError(f"unknown --discovery {self.discovery!r}; use connect or syn"
                             ) from None
        _check_number("--timeout", self.timeout, 0.1)
        _check_number("--rate", self.rate, 0.1)
        if self.concurrency < 1:
            raise UsageError(f"--concurrency must be at least 1, not {self.concurrency}")
        if self.retries is not None and self.retries < 0:
            raise UsageError(f"--retries must be 0 or more, not {self.retries}")
        from vncaudit.targets import parse_ports

        parse_ports(self.ports)  # UsageError, naming the bad item
        if self.exposure is not None:
            from vncaudit.assess.exposure import Exposure

            try:
                Exposure(self.exposure)
            except ValueError:
                raise UsageError(f"unknown exposure {self.exposure!r}") from None

    # -- what it builds --------------------------------------------------------------------

    def target_space(self) -> TargetSpace:
        """The targets, checked now (files read, host names not in `resolved` resolved);
        `UsageError` on bad input. Ordered by `seed`, or by a new one when it is None."""
        from vncaudit import targets

        known = dict(self.resolved)

        def resolve(name: str) -> list[str]:
            return list(known.get(name) or ()) or targets.default_resolver(name)

        space = targets.build_target_space(
            self.expressions, targets.parse_ports(self.ports), resolve=resolve,
            input_files=self.input_files, nmap_xml=self.nmap_xml, masscan=self.masscan,
            excludes=self.excludes, exclude_files=self.exclude_files,
            allow_special=self.allow_special)
        if self.seed is not None:
            space.seed = self.seed
        return space

    # -- stored form -------------------------------------------------------------------------

    def to_options(self) -> dict[str, Any]:
        """The JSON form kept in ``scans.options`` (flat: readers of the unversioned form keep
        finding ``expressions``, ``ports``, ``timeout`` … where they were)."""
        return {
            "spec_version": SPEC_VERSION,
            "expressions": list(self.expressions), "ports": self.ports,
            "input_files": list(self.input_files), "nmap_xml": list(self.nmap_xml),
            "masscan": list(self.masscan), "excludes": list(self.excludes),
            "exclude_files": list(self.exclude_files), "allow_special": self.allow_special,
            "domains": list(self.domains), "resolver": self.resolver,
            "resolved": {name: list(addrs) for name, addrs in self.resolved},
            "seed": self.seed, "timeout": self.timeout, "concurrency": self.concurrency,
            "rate": self.rate, "discovery_mode": self.discovery.value, "retries": self.retries,
            "no_init": self.no_init, "web": self.web, "exposure": self.exposure,
            "risk_lockout": self.risk_lockout,
            "active": {f.name: getattr(self.active, f.name) for f in fields(ActiveSpec)},
        }

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ScanSpec:
        """The spec a scan was stored with; `UsageError` when it cannot be read back (a newer
        vncaudit wrote it, or it is not a scan spec). Keys it does not know are left alone:
        the store keeps other facts of a scan beside its spec (a web scan's client, shards)."""
        version = options.get("spec_version", 1)
        if not isinstance(version, int) or version > SPEC_VERSION:
            raise UsageError(f"this scan was stored by a newer vncaudit (settings version "
                             f"{version}); upgrade vncaudit to resume it")
        try:
            return cls(
                expressions=_strings(options, "expressions"),
                ports=str(options.get("ports", DEFAULT_PORTS)),
                input_files=_strings(options, "input_files"),
                nmap_xml=_strings(options, "nmap_xml"),
                masscan=_strings(options, "masscan"),
                excludes=_strings(options, "excludes"),
                exclude_files=_strings(options, "exclude_files"),
                allow_special=bool(options.get("allow_special", False)),
                domains=_strings(options, "domains"),
                resolver=_optional(options.get("resolver"), str),
                resolved=tuple((str(n), tuple(str(a) for a in addrs))
                               for n, addrs in (options.get("resolved") or {}).items()),
                seed=_optional(options.get("seed"), int),
                timeout=float(options.get("timeout", DEFAULT_TIMEOUT)),
                concurrency=int(options.get("concurrency", DEFAULT_CONCURRENCY)),
                rate=_optional(options.get("rate"), float),
                discovery=Mode(options.get("discovery_mode", Mode.CONNECT)),
                retries=_optional(options.get("retries"), int),
                no_init=bool(options.get("no_init", False)),
                web=bool(options.get("web", True)),
                active=ActiveSpec(**dict(options.get("active") or {})),
                exposure=_optional(options.get("exposure"), str),
                risk_lockout=bool(options.get("risk_lockout", False)),
            )
        except (TypeError, ValueError, AttributeError) as exc:
            raise UsageError(f"the stored scan settings cannot be read: {exc}") from None


def _check_number(name: str, value: float | None, least: float) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < least:
        raise UsageError(f"{name} must be a finite number of at least {least:g}, not {value}")


def _strings(options: Mapping[str, Any], key: str) -> tuple[str, ...]:
    value = options.get(key) or ()
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{key} is not a list")
    return tuple(str(v) for v in value)


def _optional(value: Any, kind: type[Any]) -> Any:
    return None if value is None else kind(value)
