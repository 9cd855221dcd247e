"""Which VNC servers refuse an address after repeated connections, as data: the rules of
`data/blacklists.toml` and the choice of rule for a probe result.

Owns: loading that file (once), the frozen `Rule` each product entry becomes, and `rule_for`:
the rule a result's product (or, when the product is unknown, its fingerprint candidates)
calls for. A result whose product is unknown and that no signature matched gets the file's
[unknown] rule, the strictest known; one with candidates gets the strictest of theirs.

Must not: count connections or touch the store (that is `vncaudit.budget`), probe, or hold
product knowledge in code: every number and every source is in the data file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Final, Literal

from vncaudit.admission import FIRST_FREE

if TYPE_CHECKING:
    from vncaudit.models import Product, ServiceResult

__all__ = ["COUNTS", "Rule", "RuleError", "Rules", "load", "rule_for", "shipped"]

Counts = Literal["connections", "failed-logins", "none", "unknown"]
COUNTS: Final = ("connections", "failed-logins", "none", "unknown")
_UNKNOWN_PRODUCT: Final = "unknown"


class RuleError(ValueError):
    """The data file is malformed; the message names the entry and the field."""


@dataclass(frozen=True)
class Rule:
    """One product's blacklist: what it counts, from whom, and when it refuses."""

    id: str
    name: str
    counts: Counts
    scope: str  # "address" | "global" | "none"
    threshold: int = 0  # the counted event that arms the first block
    free: int = 0  # counted events that arm nothing
    block: float = 0.0  # seconds of the first block
    growth: float = 1.0  # each later block: previous * growth + growth_add
    growth_add: float = 0.0
    decay: str = "never"
    cleared_by: tuple[str, ...] = ()
    refusal: str = ""
    sources: tuple[str, ...] = ()
    measured: str = ""
    match: tuple[str, ...] = ()
    versions: tuple[str, ...] = ()

    @property
    def limits_probes(self) -> bool:
        """Whether a probe that never sends a password spends this server's budget. A product
        whose behaviour is unknown is assumed to count (the conservative choice)."""
        return self.counts in ("connections", "unknown")

    def block_after(self, passes: int) -> float:
        """Seconds of the block that the next counted connection arms, when `passes`
        connections beyond the free ones already went through (0: the first block)."""
        seconds = self.block
        for _ in range(max(0, passes)):
            seconds = seconds * self.growth + self.growth_add
        return seconds

    def applies_to(self, product: str, version: str | None) -> bool:
        if product not in self.match:
            return False
        if not self.versions or version is None:
            return True
        return any(version.startswith(v) for v in self.versions)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "counts": self.counts,
            "scope": self.scope,
            "threshold": self.threshold,
            "free": self.free,
            "block": self.block,
        }


@dataclass(frozen=True)
class Rules:
    """Every rule of the data file, and the one for products nobody identified."""

    rules: tuple[Rule, ...]
    unknown: Rule
    unknown_why: str

    def by_id(self, rule_id: str) -> Rule | None:
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        return None

    def for_product(self, product: str, version: str | None = None) -> Rule | None:
        """The strictest rule of this product (several when the version is not known), or
        None when the file has no entry for it."""
        return strictest(r for r in self.rules if r.applies_to(product, version))


def strictest(rules: Iterable[Rule]) -> Rule | None:
    """The rule that allows the fewest probe connections: a counting rule before a
    non-counting one, then the smallest free budget."""
    # sorted() is stable: among equals, the caller's order (best candidate first) decides.
    ordered = sorted(rules, key=lambda r: (not r.limits_probes, r.free))
    return ordered[0] if ordered else None


def _text(raw: Mapping[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if not isinstance(value, str) or (default is None and not value):
        raise RuleError(f"{where}: {key!r} must be a non-empty string")
    return value


def _texts(raw: Mapping[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = raw.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RuleError(f"{where}: {key!r} must be a list of strings")
    return tuple(value)


def _number(raw: Mapping[str, Any], key: str, where: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise RuleError(f"{where}: {key!r} must be a number >= 0")
    return float(value)


def _rule(raw: Mapping[str, Any], index: int) -> Rule:
    where = f"product #{index + 1}"
    rule_id = _text(raw, "id", where)
    where = f"product {rule_id!r}"
    counts = _text(raw, "counts", where)
    if counts not in COUNTS:
        raise RuleError(f"{where}: counts must be one of {', '.join(COUNTS)}, not {counts!r}")
    threshold = int(_number(raw, "threshold", where, 0))
    free = int(_number(raw, "free", where, 0))
    if counts in ("connections", "unknown") and not 0 <= free < max(threshold, 1):
        raise RuleError(f"{where}: free ({free}) must be below threshold ({threshold})")
    return Rule(
        id=rule_id,
        name=_text(raw, "name", where),
        counts=counts,  # type: ignore[arg-type]  # checked against COUNTS above
        scope=_text(raw, "scope", where),
        threshold=threshold,
        free=free,
        block=_number(raw, "block", where, 0.0),
        growth=_number(raw, "growth", where, 1.0),
        growth_add=_number(raw, "growth_add", where, 0.0),
        decay=_text(raw, "decay", where, "never"),
        cleared_by=_texts(raw, "cleared_by", where),
        refusal=_text(raw, "refusal", where, ""),
        sources=_texts(raw, "sources", where),
        measured=_text(raw, "measured", where, ""),
        match=_texts(raw, "match", where),
        versions=_texts(raw, "versions", where),
    )


def load(text: str) -> Rules:
    """Parse a blacklists file; `RuleError` names what is wrong."""
    import tomllib  # with the first rules read, not with every import of the ledger

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RuleError(f"not TOML: {exc}") from exc
    entries = doc.get("product")
    if not isinstance(entries, list) or not entries:
        raise RuleError("no [[product]] entries")
    rules = tuple(_rule(raw, i) for i, raw in enumerate(entries))
    ids = [r.id for r in rules]
    if len(set(ids)) != len(ids):
        raise RuleError(f"duplicate product ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    unknown_raw = doc.get("unknown")
    if not isinstance(unknown_raw, Mapping):
        raise RuleError("no [unknown] table")
    unknown_id = _text(unknown_raw, "rule", "[unknown]")
    unknown = next((r for r in rules if r.id == unknown_id), None)
    if unknown is None or not unknown.limits_probes:
        raise RuleError(f"[unknown]: rule {unknown_id!r} must name a product that counts "
                        "connections")
    if unknown.free < FIRST_FREE:
        # The early start of a connect scan grants a pair without history its first
        # connection before this file is read (`vncaudit.admission`).
        raise RuleError(f"[unknown]: rule {unknown_id!r} must let at least {FIRST_FREE} "
                        "connection pass (free)")
    return Rules(rules, unknown, _text(unknown_raw, "why", "[unknown]"))


@cache
def shipped() -> Rules:
    """The rules of data/blacklists.toml, read once."""
    # Read through the package's loader (a directory or a zip): importlib.resources would
    # import tempfile, zipfile and more (~20 ms) before a connect scan's first packet.
    import pkgutil

    raw = pkgutil.get_data("vncaudit", "data/blacklists.toml")
    if raw is None:  # a loader that cannot read data files
        from importlib import resources

        return load(resources.files("vncaudit").joinpath("data/blacklists.toml")
                    .read_text("utf-8"))
    return load(raw.decode("utf-8"))


def handshake_key(result: ServiceResult) -> tuple[Any, ...]:
    """What the signatures read of a result, but the desktop name and geometry (sent per
    session): equal keys get equal candidates. Cheap: no dataclass is copied."""
    rfb = result.rfb
    if rfb is None:
        return (result.state,)
    ven = rfb.vencrypt
    tight = rfb.tight
    return (result.state, rfb.banner, tuple(t.id for t in rfb.security_types),
            rfb.security_types_server_chosen,
            tuple(t.id for t in ven.subtypes) if ven is not None else None,
            tuple((c.code, c.vendor, c.signature) for c in tight.auth)
            if tight is not None else None,
            tuple(t.id for t in rfb.tls_inner_types) if rfb.tls_inner_types is not None
            else None,
            rfb.failure_reason, rfb.security_result, rfb.notes,
            rfb.framebuffer.true_colour_flag if rfb.framebuffer is not None else None)


_CANDIDATES: dict[Any, tuple[str, ...]] = {}
_CANDIDATES_KEPT: Final = 4096  # distinct handshakes remembered (a scan sees few)


def candidates_of(result: ServiceResult) -> tuple[str, ...]:
    """The products the fingerprint signatures matching `result` name (best first).

    Remembered per handshake (the facts but the desktop name and geometry, which a server
    sends per session): matching every signature costs more than a whole probe, and a scan
    meets the same few handshakes thousands of times."""
    from vncaudit import fingerprint  # lazily: fingerprinting is only needed for unknowns

    key = handshake_key(result)
    known = _CANDIDATES.get(key)
    if known is not None:
        return known
    seen: list[str] = []
    for match in fingerprint.explain(result):
        name = match.signature.product
        if name not in seen:
            seen.append(name)
    if len(_CANDIDATES) >= _CANDIDATES_KEPT:
        _CANDIDATES.clear()
    _CANDIDATES[key] = found = tuple(seen)
    return found


def rule_for(
    product: Product | None,
    candidates: Sequence[str] = (),
    rules: Rules | None = None,
) -> Rule:
    """The rule for a server whose product is `product` (None or "unknown" when not
    identified) and whose fingerprint `candidates` are these product names.

    An identified product with an entry gets its rule (the strictest of its entries when
    the version is not known); an unknown one gets the strictest rule among its candidates
    that have entries; with no candidate (or none in the file) it gets the [unknown] rule.
    """
    rules = rules or shipped()
    if product is not None and product.name != _UNKNOWN_PRODUCT:
        found = rules.for_product(product.name, product.version)
        if found is not None:
            return found
        candidates = (product.name, *candidates)
    known = [r for name in candidates if (r := rules.for_product(name)) is not None]
    if not known or len(known) < len(candidates):
        # A candidate the file says nothing about could count connections.
        known.append(rules.unknown)
    # Among equally strict rules the [unknown] one is named: it is the documented default.
    known.sort(key=lambda r: r is not rules.unknown)
    best = strictest(known)
    assert best is not None
    return best


def rule_for_result(result: ServiceResult, rules: Rules | None = None) -> Rule:
    """`rule_for` with the candidates worked out from the result's RFB facts when its product
    is not known or has no entry (a web front end: the backend's candidates then decide)."""
    rules = rules or shipped()
    product = result.product
    if product is not None and product.name != _UNKNOWN_PRODUCT:
        found = rules.for_product(product.name, product.version)
        if found is not None:
            return found
    if result.rfb is None:
        return rules.unknown
    return rule_for(None, candidates_of(result), rules)
