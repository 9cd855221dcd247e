"""The blacklist rules as data (src/vncaudit/data/blacklists.toml) and the choice of rule."""

from __future__ import annotations

import pytest

from vncaudit import blacklists
from vncaudit.models import NamedType, Product, RfbFacts, ServiceResult, State


def test_every_shipped_rule_has_a_source_and_says_what_it_counts() -> None:
    rules = blacklists.shipped()
    assert len(rules.rules) >= 12
    for rule in rules.rules:
        assert rule.sources, rule.id
        assert rule.counts in blacklists.COUNTS
        if rule.limits_probes:
            assert rule.free == rule.threshold - 1 or rule.id == "ultravnc", rule.id
            assert rule.block > 0


def test_tigervnc_numbers_are_the_measured_ones() -> None:
    rule = blacklists.rule_for(Product("TigerVNC", "1.12"))
    assert (rule.id, rule.counts, rule.scope) == ("tigervnc", "connections", "address")
    assert (rule.threshold, rule.free) == (5, 4)
    assert [rule.block_after(n) for n in range(4)] == [10, 20, 40, 80]


@pytest.mark.parametrize(("name", "version", "expected", "limits"), [
    ("TigerVNC", None, "tigervnc", True),
    ("RealVNC", "4.1", "realvnc-4", True),
    ("RealVNC", ">=5.3", "realvnc-5", True),
    ("RealVNC", None, "realvnc-4", True),  # version unknown: the strictest RealVNC entry
    ("UltraVNC", ">=1.4.0.1", "ultravnc", True),
    ("TurboVNC", None, "turbovnc", False),
    ("TightVNC", "1.3", "tightvnc-1.3", False),
    ("TightVNC", "2", "tightvnc-2", False),
    ("x11vnc", None, "libvncserver", False),
    ("LibVNCServer", None, "libvncserver", False),
    ("VirtualBox", None, "libvncserver", False),
    ("QEMU", None, "qemu", False),
    ("macOS Screen Sharing", None, "macos", True),
    ("Some Embedded VNC", None, "tigervnc", True),  # no entry: the [unknown] rule
])
def test_rule_for_a_named_product(name: str, version: str | None, expected: str,
                                  limits: bool) -> None:
    rule = blacklists.rule_for(Product(name, version))
    assert rule.id == expected
    assert rule.limits_probes is limits


def test_an_unknown_product_counts_when_one_candidate_counts() -> None:
    assert blacklists.rule_for(None, ["LibVNCServer", "TigerVNC"]).id == "tigervnc"
    assert blacklists.rule_for(Product("unknown"), ["QEMU", "x11vnc"]).id in ("qemu",
                                                                             "libvncserver")
    assert not blacklists.rule_for(None, ["QEMU", "x11vnc"]).limits_probes
    # Nothing matched at all, or a candidate the file does not know: assume the worst.
    assert blacklists.rule_for(None, []).id == "tigervnc"
    assert blacklists.rule_for(None, ["QEMU", "Mystery"]).limits_probes


def _result(banner: str, types: tuple[int, ...], product: Product | None) -> ServiceResult:
    version = banner.strip()[4:].replace("003.00", "3.")
    facts = RfbFacts(banner=banner, server_version=version,
                     security_types=tuple(NamedType(t, str(t)) for t in types))
    return ServiceResult("127.0.0.1", 5900, State.VNC, rfb=facts, product=product)


def test_rule_for_result_uses_the_fingerprint_candidates() -> None:
    # "RFB 003.008" with [2] alone fits LibVNCServer, QEMU, TigerVNC (VncAuth only) ...: counted.
    plain = _result("RFB 003.008\n", (2,), Product("unknown"))
    assert {"TigerVNC", "LibVNCServer"} <= set(blacklists.candidates_of(plain))
    rule = blacklists.rule_for_result(plain)
    assert rule.limits_probes and rule.free == 4
    named = _result("RFB 003.008\n", (2,), Product("x11vnc"))
    assert not blacklists.rule_for_result(named).limits_probes
    nothing = ServiceResult("127.0.0.1", 5900, State.TARPIT)
    assert blacklists.rule_for_result(nothing).id == "tigervnc"


@pytest.mark.parametrize(("text", "message"), [
    ("not toml [", "not TOML"),
    ("[unknown]\nrule='x'\nwhy='y'\n", "no [[product]]"),
    ("[[product]]\nid='a'\nname='A'\ncounts='sometimes'\nscope='address'\n"
     "[unknown]\nrule='a'\nwhy='w'\n", "counts must be one of"),
    ("[[product]]\nid='a'\nname='A'\ncounts='connections'\nscope='address'\nthreshold=5\n"
     "free=5\n[unknown]\nrule='a'\nwhy='w'\n", "free (5) must be below threshold (5)"),
    ("[[product]]\nid='a'\nname='A'\ncounts='none'\nscope='none'\n"
     "[unknown]\nrule='a'\nwhy='w'\n", "must name a product that counts"),
    ("[[product]]\nid='a'\nname='A'\ncounts='none'\nscope='none'\nblock=-1\n"
     "[unknown]\nrule='a'\nwhy='w'\n", "'block' must be a number >= 0"),
    # The early start of a connect scan grants a pair without history one connection before
    # the file is read (vncaudit.admission): the [unknown] rule must let one pass.
    ("[[product]]\nid='a'\nname='A'\ncounts='connections'\nscope='address'\nthreshold=1\n"
     "free=0\n[unknown]\nrule='a'\nwhy='w'\n", "must let at least 1 connection pass"),
])
def test_a_malformed_file_is_one_clear_error(text: str, message: str) -> None:
    with pytest.raises(blacklists.RuleError, match=message.replace("(", r"\(").replace(
            ")", r"\)").replace("[", r"\[")):
        blacklists.load(text)
