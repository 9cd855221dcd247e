"""Product identification from observed facts: which VNC server (and version) answered.

Owns: a small, data-driven matcher over the signatures of `data/products.toml` (read once with
`tomllib`). Each signature is a conjunction of clauses over what a probe observed — banner,
security-type list and order, VeNCrypt sub-types, Tight auth capabilities, failure text,
desktop name, probe notes, and a web front end's HTTP facts from `ServiceResult.extra.web`.
A product's score is the summed weight of the distinct facts its matching signatures rest on;
the best product wins only when it beats the best rival product by the file's margin, and its
confidence grows with that margin. Ties and weak evidence give `Product("unknown", ...)` with
the candidates as evidence: an unknown server stays unknown, never a guess dressed as fact.

Must not: do I/O beyond reading its data file once, import anything of the package but the
`models`/`payloads` data types, parse RFB bytes (the facts come from `rfb` via `probe`), or
grade anything (that is `assess`). Knowledge lives in the data file, not in `if`s here.
"""

from __future__ import annotations

import math
import re
import threading
import tomllib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Final

from vncaudit.models import Product, RfbFacts, ServiceResult
from vncaudit.payloads import ActiveChecks, WebFrontEnd

UNKNOWN: Final = "unknown"
LAYERS: Final = ("rfb", "web")


# --------------------------------------------------------------------------------------------
# Facts: what the matcher reads from a result (schema v1 fields and extra.web)


@dataclass(frozen=True)
class Facts:
    """The observations signatures are matched against, flattened from a `ServiceResult`."""

    banner: str | None = None  # "RFB 003.889" (newline stripped)
    version: str | None = None  # "3.889"
    types: tuple[int, ...] = ()  # de-duplicated, in the server's order
    type_names: Mapping[int, str] = field(default_factory=dict)
    server_chosen: bool = False
    vencrypt: tuple[int, ...] | None = None
    tight_auth: tuple[str, ...] | None = None  # "VEND SIGNATURE"
    failure: str | None = None
    desktop: str | None = None
    notes: tuple[str, ...] = ()
    http_servers: tuple[str, ...] = ()
    web_kind: str | None = None
    true_colour_flag: int | None = None  # ServerInit's raw byte, when it was read


def _web_facts(web: WebFrontEnd | None) -> tuple[tuple[str, ...], str | None]:
    if web is None:
        return (), None
    kind = web.http.kind if web.http is not None else None
    return web.servers, kind if kind != "none" else None


def _active_desktop(active: ActiveChecks | None) -> str | None:
    # A ServerInit read by an active check (with --password or --screenshot) names the desktop
    # of a server that needs authentication, which the probe alone never reaches.
    if active is None:
        return None
    if active.auth is not None and active.auth.handshake.desktop_name is not None:
        return active.auth.handshake.desktop_name
    if active.screenshot is not None:
        return active.screenshot.desktop_name
    return None


def facts_of(result: ServiceResult) -> Facts:
    """Flatten a result into the facts the signatures read."""
    servers, kind = _web_facts(result.extra.web)
    rfb: RfbFacts | None = result.rfb
    if rfb is None:
        return Facts(http_servers=servers, web_kind=kind,
                     desktop=_active_desktop(result.extra.active))
    tight = None
    if rfb.tight is not None:
        tight = tuple(f"{c.vendor} {c.signature}" for c in rfb.tight.auth)
    return Facts(
        banner=rfb.banner.rstrip("\r\n") or None,
        version=rfb.server_version,
        types=tuple(t.id for t in rfb.security_types),
        type_names={t.id: t.name for t in rfb.security_types},
        server_chosen=rfb.security_types_server_chosen,
        vencrypt=tuple(s.id for s in rfb.vencrypt.subtypes) if rfb.vencrypt else None,
        tight_auth=tight,
        failure=rfb.failure_reason,
        desktop=rfb.desktop_name if rfb.desktop_name is not None
        else _active_desktop(result.extra.active),
        notes=rfb.notes,
        http_servers=servers,
        web_kind=kind,
        true_colour_flag=rfb.framebuffer.true_colour_flag if rfb.framebuffer else None,
    )


# --------------------------------------------------------------------------------------------
# Clauses: each returns None (no match) or (weight units, evidence, captured version)

Hit = tuple[float, str, str | None]
Clause = Callable[[Facts, Any, "Config"], Hit | None]


@dataclass(frozen=True)
class Config:
    scale: float
    min_score: float
    min_margin: float
    max_confidence: float
    common_banners: frozenset[str]
    weights: Mapping[str, float]


def _named(f: Facts, types: Iterable[int]) -> str:
    return ", ".join(
        f"{t} ({f.type_names[t]})" if t in f.type_names else str(t) for t in types
    )


def _banner(f: Facts, want: Sequence[str], cfg: Config) -> Hit | None:
    if f.version is None or f.version not in want:
        return None
    return (1.0, f"banner {f.banner}", None)


def _types(f: Facts, want: Sequence[int], cfg: Config) -> Hit | None:
    if f.types != tuple(want):
        return None
    if f.server_chosen:
        return (len(want), f"RFB 3.3: the server chose type {_named(f, want)}", None)
    return (len(want), f"security types {list(want)} in this order", None)


def _types_prefix(f: Facts, want: Sequence[int], cfg: Config) -> Hit | None:
    if f.types[: len(want)] != tuple(want):
        return None
    return (len(want), f"security types start with {list(want)}", None)


def _types_include(f: Facts, want: Sequence[int], cfg: Config) -> Hit | None:
    if not set(want) <= set(f.types):
        return None
    return (len(want), f"security types include {_named(f, want)}", None)


def _types_any(f: Facts, want: Sequence[int], cfg: Config) -> Hit | None:
    seen = [t for t in f.types if t in set(want)]
    if not seen:
        return None
    return (1.0, f"security type {_named(f, seen)} offered", None)


def _types_none(f: Facts, want: Sequence[int], cfg: Config) -> Hit | None:
    if set(want) & set(f.types):
        return None
    return (1.0, f"none of the types {list(want)} offered", None)


def _types_count(f: Facts, want: int, cfg: Config) -> Hit | None:
    if not f.types or len(f.types) != want:
        return None
    return (1.0, f"exactly {want} security type{'s' if want != 1 else ''} offered", None)


def _server_chosen(f: Facts, want: bool, cfg: Config) -> Hit | None:
    if not f.types or f.server_chosen is not want:
        return None
    return (1.0, "RFB 3.3: the server chose the type" if want else "server sent a type list",
            None)


def _vencrypt(f: Facts, want: Sequence[int], cfg: Config) -> Hit | None:
    if f.vencrypt is None or f.vencrypt != tuple(want):
        return None
    return (len(want), f"VeNCrypt sub-types {list(want)} in this order", None)


def _vencrypt_any(f: Facts, want: Sequence[int], cfg: Config) -> Hit | None:
    seen = [s for s in f.vencrypt or () if s in set(want)]
    if not seen:
        return None
    return (1.0, f"VeNCrypt sub-types include {seen}", None)


def _vencrypt_count(f: Facts, want: int, cfg: Config) -> Hit | None:
    if f.vencrypt is None or len(f.vencrypt) != want:
        return None
    return (1.0, f"exactly {want} VeNCrypt sub-type{'s' if want != 1 else ''}", None)


def _tight_auth(f: Facts, want: Sequence[str], cfg: Config) -> Hit | None:
    if f.tight_auth is None or f.tight_auth != tuple(want):
        return None
    if not want:
        return (1.0, "Tight offers no auth capability", None)
    caps = ", ".join(want)
    return (len(want), f"Tight auth capabilit{'y' if len(want) == 1 else 'ies'} {caps}", None)


def _tight_auth_any(f: Facts, want: Sequence[str], cfg: Config) -> Hit | None:
    seen = [c for c in f.tight_auth or () if c in set(want)]
    if not seen:
        return None
    return (1.0, f"Tight auth capability {', '.join(seen)}", None)


@cache
def _compiled(pattern: str, flags: int = 0) -> re.Pattern[str]:
    # The patterns are the data file's, a few dozen: compiled once, not looked up per call.
    return re.compile(pattern, flags)


def _regex(value: str | None, pattern: str, flags: int = 0) -> re.Match[str] | None:
    return None if value is None else _compiled(pattern, flags).search(value)


def _r(text: str, limit: int = 160) -> str:
    """repr() of a server's string, bounded: evidence is read by people, and a reason or a
    desktop name may be 64 KiB."""
    if len(text) <= limit:
        return repr(text)
    return f"{text[:limit]!r}… (+{len(text) - limit} characters)"


def _failure(f: Facts, pattern: str, cfg: Config) -> Hit | None:
    if _regex(f.failure, pattern, re.IGNORECASE) is None:
        return None
    return (1.0, f"failure text {_r(f.failure or '')}", None)


def _desktop(f: Facts, pattern: str, cfg: Config) -> Hit | None:
    if _regex(f.desktop, pattern) is None:
        return None
    return (1.0, f"desktop name {_r(f.desktop or '')}", None)


def _notes(f: Facts, pattern: str, cfg: Config) -> Hit | None:
    rx = _compiled(pattern)
    for note in f.notes:
        if rx.search(note):
            return (1.0, f"probe note {note!r}", None)
    return None


def _http_server(f: Facts, pattern: str, cfg: Config) -> Hit | None:
    rx = _compiled(pattern)
    for server in f.http_servers:
        m = rx.search(server)
        if m is not None:
            version = m.groupdict().get("version")
            return (1.0, f"HTTP Server header {server!r}", version)
    return None


def _web_kind(f: Facts, want: Sequence[str], cfg: Config) -> Hit | None:
    if f.web_kind is None or f.web_kind not in want:
        return None
    return (1.0, f"web front end: {f.web_kind}", None)


def _true_colour_flag(f: Facts, want: Sequence[int], cfg: Config) -> Hit | None:
    if f.true_colour_flag is None or f.true_colour_flag not in want:
        return None
    return (1.0, f"ServerInit true-colour flag {f.true_colour_flag:#04x}", None)


CLAUSES: Final[dict[str, Clause]] = {
    "banner": _banner,
    "types": _types,
    "types_prefix": _types_prefix,
    "types_include": _types_include,
    "types_any": _types_any,
    "types_none": _types_none,
    "types_count": _types_count,
    "server_chosen": _server_chosen,
    "vencrypt": _vencrypt,
    "vencrypt_any": _vencrypt_any,
    "vencrypt_count": _vencrypt_count,
    "tight_auth": _tight_auth,
    "tight_auth_any": _tight_auth_any,
    "failure": _failure,
    "desktop": _desktop,
    "notes": _notes,
    "http_server": _http_server,
    "web_kind": _web_kind,
    "true_colour_flag": _true_colour_flag,
}


# --------------------------------------------------------------------------------------------
# Signatures (data/products.toml)


@dataclass(frozen=True)
class Signature:
    id: str
    product: str
    version: str | None
    layer: str
    match: Mapping[str, Any]
    weights: Mapping[str, float]
    note: str | None
    source: str


@dataclass(frozen=True)
class Match:
    """One signature whose every clause held: its facts (evidence -> weight) and version."""

    signature: Signature
    facts: Mapping[str, float]
    version: str | None

    @property
    def score(self) -> float:
        return sum(self.facts.values())


class SignatureError(ValueError):
    """products.toml is malformed (a bug in the shipped data, caught by the tests)."""


# --------------------------------------------------------------------------------------------
# Memo: many services show the same facts (same product, same configuration)

FactsKey = tuple[Any, ...]
CACHE_SIZE: Final = 4096


def _facts_key(f: Facts, desktop: Any) -> FactsKey:
    """Every field of `f`, hashable, the desktop name as `desktop` says (see `identify`)."""
    return (f.banner, f.version, f.types, tuple(f.type_names.items()), f.server_chosen,
            f.vencrypt, f.tight_auth, f.failure, desktop, f.notes, f.http_servers,
            f.web_kind, f.true_colour_flag)


class _Lru:
    """A bounded least-recently-used map (Product values are frozen, so safe to share)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.data: dict[FactsKey, tuple[Product, str | None]] = {}
        self.lock = threading.Lock()  # the web UI grades from worker threads

    def get(self, key: FactsKey) -> tuple[Product, str | None] | None:
        with self.lock:
            value = self.data.pop(key, None)
            if value is not None:
                self.data[key] = value  # most recent last
            return value

    def put(self, key: FactsKey, value: tuple[Product, str | None]) -> None:
        with self.lock:
            self.data[key] = value
            if len(self.data) > self.size:
                del self.data[next(iter(self.data))]


@dataclass(frozen=True)
class Signatures:
    """A parsed signature file: scoring settings and signatures, in file order."""

    config: Config
    signatures: tuple[Signature, ...]
    # Derived, per instance (so a test's own signatures never see the shipped ones' answers):
    # the product already decided for a set of facts, and the banner index of `candidates`.
    memo: _Lru = field(default_factory=lambda: _Lru(CACHE_SIZE), init=False, repr=False,
                       compare=False)
    _index: dict[tuple[str, str | None], tuple[Signature, ...]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    _desktop: list[tuple[str, ...] | None] = field(
        default_factory=list, init=False, repr=False, compare=False)

    def desktop_patterns(self) -> tuple[str, ...] | None:
        """The distinct `desktop` patterns, or None when a signature's note could be taken for
        a desktop-name line (then the memo keeps each desktop name apart, see `identify`)."""
        if not self._desktop:
            clash = any(s.note and s.note.startswith("desktop name ") for s in self.signatures)
            found = dict.fromkeys(str(s.match["desktop"]) for s in self.signatures
                                  if "desktop" in s.match)
            self._desktop.append(None if clash else tuple(found))
        return self._desktop[0]

    def candidates(self, layer: str, version: str | None) -> tuple[Signature, ...]:
        """The signatures of `layer` that can match a server of banner `version`, in file
        order: a signature with a `banner` clause that does not list the version cannot."""
        if not self._index:
            self._index.update(_build_index(self.signatures))
        by_version = self._index.get((layer, version))
        return by_version if by_version is not None else self._index[(layer, None)]


def _build_index(
    signatures: Sequence[Signature],
) -> dict[tuple[str, str | None], tuple[Signature, ...]]:
    # Most signatures start with a banner clause; skipping those whose banners cannot match
    # saves most of the per-result work (58 signatures, a dozen candidates for one banner).
    out: dict[tuple[str, str | None], tuple[Signature, ...]] = {}
    for layer in LAYERS:
        sigs = [s for s in signatures if s.layer == layer]
        versions = {str(v) for s in sigs for v in s.match.get("banner", ())}
        out[(layer, None)] = tuple(s for s in sigs if "banner" not in s.match)
        for version in versions:
            out[(layer, version)] = tuple(
                s for s in sigs if "banner" not in s.match or version in s.match["banner"])
    return out


def load(text: str) -> Signatures:
    """Parse a products.toml text; SignatureError when a signature is malformed."""
    doc = tomllib.loads(text)
    sc = doc["scoring"]
    weights = {str(k): float(v) for k, v in doc["weights"].items()}
    cfg = Config(
        float(sc["scale"]), float(sc["min_score"]), float(sc["min_margin"]),
        float(sc["max_confidence"]), frozenset(sc["common_banners"]), weights,
    )
    sigs: list[Signature] = []
    seen: set[str] = set()
    for raw in doc.get("signature", []):
        sid = str(raw["id"])
        match = dict(raw.get("match") or {})
        unknown = set(match) - set(CLAUSES)
        own = {str(k): float(v) for k, v in (raw.get("weights") or {}).items()}
        if sid in seen or not match or unknown or set(own) - set(CLAUSES):
            raise SignatureError(f"signature {sid!r}: duplicate, empty or unknown clause "
                                 f"{sorted(unknown | (set(own) - set(CLAUSES)))}")
        unweighted = [c for c in match if c not in own and c not in weights]
        if unweighted or ("banner" in match and "banner_common" not in weights):
            raise SignatureError(f"signature {sid!r}: no weight for {unweighted or ['banner']}")
        if raw.get("layer", "rfb") not in LAYERS:
            raise SignatureError(f"signature {sid!r}: unknown layer {raw.get('layer')!r}")
        for key, pattern in match.items():
            if key in ("failure", "desktop", "notes", "http_server"):
                try:
                    re.compile(pattern)  # a bad pattern fails at load time, not at a scan
                except re.error as exc:
                    raise SignatureError(f"signature {sid!r}: bad {key} pattern: {exc}") from exc
        seen.add(sid)
        sigs.append(Signature(
            sid, str(raw["product"]), raw.get("version"), str(raw.get("layer", "rfb")), match,
            own, raw.get("note"), str(raw.get("source", "")),
        ))
    return Signatures(cfg, tuple(sigs))


@cache
def shipped() -> Signatures:
    """The signatures of data/products.toml, read once."""
    return load(resources.files("vncaudit").joinpath("data/products.toml").read_text("utf-8"))


_LIST_CLAUSES: Final = frozenset({"types", "types_prefix", "types_include", "types_any",
                                   "types_none", "types_count"})


def _weight(sig: Signature, clause: str, facts: Facts, cfg: Config) -> float:
    if clause in sig.weights:
        return sig.weights[clause]
    if clause == "banner" and facts.version in cfg.common_banners:
        return cfg.weights["banner_common"]
    return cfg.weights[clause]


def match_signature(sig: Signature, facts: Facts, cfg: Config) -> Match | None:
    """The match of one signature, or None when any of its clauses fails."""
    if facts.server_chosen and not sig.match.get("server_chosen") and (
        not _LIST_CLAUSES.isdisjoint(sig.match)
    ):
        return None  # an RFB 3.3 server's choice is not the list it would offer
    got: dict[str, float] = {}
    version = sig.version
    for clause, want in sig.match.items():
        hit = CLAUSES[clause](facts, want, cfg)
        if hit is None:
            return None
        units, evidence, captured = hit
        got[evidence] = max(got.get(evidence, 0.0), _weight(sig, clause, facts, cfg) * units)
        version = captured or version
    if sig.note:
        got[sig.note] = 0.0  # explains, weighs nothing
    return Match(sig, got, version)


def explain(
    result: ServiceResult, layer: str = "rfb", data: Signatures | None = None
) -> list[Match]:
    """Every signature of *layer* that matches *result*, best first (for tests and reports)."""
    data = data or shipped()
    return _explain(facts_of(result), layer, data)


def _explain(facts: Facts, layer: str, data: Signatures) -> list[Match]:
    found = [
        m for s in data.candidates(layer, facts.version)
        if (m := match_signature(s, facts, data.config))
    ]
    return sorted(found, key=lambda m: (-m.score, m.signature.id))


# --------------------------------------------------------------------------------------------
# Decision


def _union(matches: Iterable[Match]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in matches:
        for evidence, weight in m.facts.items():
            out[evidence] = max(out.get(evidence, 0.0), weight)
    return out


def _observed(f: Facts) -> list[str]:
    out: list[str] = []
    if f.banner:
        out.append(f"banner {f.banner}")
    if f.types:
        what = "server chose type" if f.server_chosen else "security types"
        out.append(f"{what} {list(f.types)}")
    if f.vencrypt is not None:
        out.append(f"VeNCrypt sub-types {list(f.vencrypt)}")
    if f.tight_auth is not None:
        out.append(f"Tight auth capabilities {list(f.tight_auth)}")
    if f.failure:
        out.append(f"failure text {_r(f.failure)}")
    if f.desktop is not None:
        out.append(f"desktop name {_r(f.desktop)}")
    return out


def _decide(matches: list[Match], facts: Facts, cfg: Config) -> Product:
    by_product: dict[str, list[Match]] = {}
    for m in matches:
        by_product.setdefault(m.signature.product, []).append(m)
    if not by_product:
        return Product(UNKNOWN, None, 0.0, tuple([*_observed(facts), "no signature matched"]))
    scored = sorted(
        ((sum(_union(ms).values()), name) for name, ms in by_product.items()),
        key=lambda item: (-item[0], item[1]),
    )
    best_score, best = scored[0]
    rival_score, rival = scored[1] if len(scored) > 1 else (0.0, None)
    margin = best_score - rival_score
    if best_score < cfg.min_score or margin < cfg.min_margin:
        near = [f"{name} (score {score:.2f})" for score, name in scored
                if score >= best_score - cfg.min_margin]
        why = ("weak evidence" if best_score < cfg.min_score
               else "ambiguous: the facts fit several products about equally")
        return Product(UNKNOWN, None, 0.0, tuple(
            [*_observed(facts), f"{why}; candidates: {', '.join(near)}"]))
    version, version_note = _version(by_product[best], cfg)
    evidence = [e for e in _union(by_product[best])]
    if version_note:
        evidence.append(version_note)
    if rival is not None:
        evidence.append(f"next candidate: {rival} (score {rival_score:.2f} vs {best_score:.2f})")
    confidence = min(cfg.max_confidence, 1.0 - math.exp(-margin / cfg.scale))
    return Product(best, version, round(confidence, 2), tuple(evidence))


def _version(matches: list[Match], cfg: Config) -> tuple[str | None, str | None]:
    """The version the product's matches support, or None with a note when they disagree."""
    versions = {m.version for m in matches if m.version}
    if not versions:
        return None, None
    neutral = [m for m in matches if not m.version]
    scores = sorted(
        ((sum(_union([*neutral, *(m for m in matches if m.version == v)]).values()), v)
         for v in versions),
        reverse=True,
    )
    top_score, top = scores[0]
    close = [v for s, v in scores if s > top_score - cfg.min_margin]
    if len(close) > 1:
        return None, f"version not decided: {' or '.join(sorted(close))}"
    return top, None


def identify_backend(result: ServiceResult, data: Signatures | None = None) -> Product:
    """The product the RFB-level facts point to, a web front end ignored (the connection
    ledger's rule is the backend's: the front end does not count connections)."""
    data = data or shipped()
    facts = facts_of(result)
    return _decide(_explain(facts, "rfb", data), facts, data.config)


def identify(result: ServiceResult, data: Signatures | None = None) -> Product:
    """Identify the product behind *result* (see the module docstring for how).

    A web front end (noVNC/websockify) is named when the web facts show one; what the RFB
    stream behind it looks like is then given as "backend ..." evidence. *data* replaces the
    shipped signatures (tests).
    """
    data = data or shipped()
    facts = facts_of(result)
    desktop = facts.desktop
    key = (_facts_key(facts, desktop_slot(desktop, data)), result.rfb is None)
    hit = data.memo.get(key)
    if hit is not None:
        product, seen = hit
        return product if seen == desktop else _with_desktop(product, seen, desktop)
    product = identify_unmemoised(facts, result.rfb is None, data)
    data.memo.put(key, (product, desktop))
    return product


def desktop_slot(desktop: str | None, data: Signatures | None = None) -> Hashable:
    """What a desktop name counts for in `identify` (under `data`, default the shipped
    signatures): which desktop patterns it matches. It shows only in "desktop name '...'"
    lines of the product's evidence, so facts differing in nothing else share one product.
    The name itself when a signature's note could be taken for such a line."""
    data = data or shipped()
    patterns = data.desktop_patterns() if desktop is not None else None
    if desktop is not None and patterns is not None:
        return ("matches", tuple(_compiled(p).search(desktop) is not None for p in patterns))
    return ("name", desktop)


def _with_desktop(product: Product, seen: str | None, desktop: str | None) -> Product:
    old = f"desktop name {_r(seen) if seen is not None else None}"
    new = f"desktop name {_r(desktop) if desktop is not None else None}"
    return Product(product.name, product.version, product.confidence,
                   tuple(new if e == old else e for e in product.evidence))


def identify_unmemoised(facts: Facts, no_rfb: bool, data: Signatures) -> Product:
    """`identify` without the memo: the product the facts point to under `data`."""
    cfg = data.config
    web = _explain(facts, "web", data)
    backend = _decide(_explain(facts, "rfb", data), facts, cfg)
    if not web:
        return backend
    front = _decide(web, Facts(http_servers=facts.http_servers, web_kind=facts.web_kind), cfg)
    if front.name == UNKNOWN:
        return backend
    if backend.name != UNKNOWN:
        tail = f"backend {backend.name}" + (f" {backend.version}" if backend.version else "")
        tail += f" (confidence {backend.confidence:.2f})"
    elif not no_rfb:
        tail = "backend not identified"
    else:
        tail = "no RFB stream read behind the front end"
    return Product(front.name, front.version, front.confidence, (*front.evidence, tail))

