"""Parse and stream scan targets and ports: expressions, input files, exclusions, policy.

Owns: the port syntax (`parse_ports`), target expressions (IPv4/IPv6 addresses, CIDRs, ranges,
hostnames, `-iL` lists, nmap XML, masscan output), exclusions, the table of special networks that
need `allow_special`, and the randomised, shardable walk over the (address, port) space
(`TargetSpace.iter_targets`, a zmap-style cyclic group permutation).

Must not: open sockets or send packets (its only I/O is reading the files the user named and
resolving the hostnames the user gave, once each, through an injectable resolver); materialise a
range (memory is flat in the size of a CIDR or range: a space stores one entry per merged
interval, never per address); import anything of the package but `models` and `exceptions`.
Every user-input error is a `UsageError` with one line that names the bad input.

The package re-exports its public names; the parts live in:
  * `ports`        — the port syntax (`parse_ports`, `format_ports`, `DEFAULT_PORTS`);
  * `addresses`    — the integer key space, merged intervals, `SPECIAL_NETWORKS`;
  * `expressions`  — addresses, CIDRs, ranges, hostnames and their resolution;
  * `inputs`       — `-iL` lists, nmap XML, masscan output;
  * `permutation`  — the zmap-style cyclic permutation;
  * `space`        — `TargetSpace` and `build_target_space`;
  * `errors`       — the one-line `UsageError` helpers they share.
Each part imports only parts listed before it in this order: errors, ports, addresses,
expressions, inputs, permutation, space (`permutation` imports none of them).
Importing one part does not import the others: the package's names are looked up in their
parts when first used (the early start of a SYN scan imports `permutation` alone).
"""

from __future__ import annotations

import importlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vncaudit.targets.addresses import SPECIAL_NETWORKS, IPAddress
    from vncaudit.targets.expressions import MAX_IPV6_EXPRESSION, Resolver, default_resolver
    from vncaudit.targets.inputs import PathLike
    from vncaudit.targets.ports import DEFAULT_PORTS, VNC_DISPLAY_BASE, format_ports, parse_ports
    from vncaudit.targets.space import TargetSpace, build_target_space

# name -> the part that defines it
_PARTS = {
    "SPECIAL_NETWORKS": "addresses", "IPAddress": "addresses",
    "MAX_IPV6_EXPRESSION": "expressions", "Resolver": "expressions",
    "default_resolver": "expressions", "PathLike": "inputs", "DEFAULT_PORTS": "ports",
    "VNC_DISPLAY_BASE": "ports", "format_ports": "ports", "parse_ports": "ports",
    "TargetSpace": "space", "build_target_space": "space",
}

__all__ = [
    "DEFAULT_PORTS",
    "MAX_IPV6_EXPRESSION",
    "SPECIAL_NETWORKS",
    "VNC_DISPLAY_BASE",
    "IPAddress",
    "PathLike",
    "Resolver",
    "TargetSpace",
    "build_target_space",
    "default_resolver",
    "format_ports",
    "parse_ports",
]


def __getattr__(name: str) -> object:
    part = _PARTS.get(name)
    if part is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{part}"), name)
    globals()[name] = value
    return value
