"""Property and state-machine tests of the sans-IO RFB client (hypothesis), plus the replay of
the atheris corpus and of every fuzz finding (`fuzz/regressions/`).

* Real transcripts (`tests/transcripts/*.json`, recorded from TigerVNC, x11vnc and Xtightvnc) cut
  at random points give the same events, and the client's own bytes equal what the recorded
  client sent, whatever the cuts.
* Random bytes and random client actions raise nothing but ProtocolError: RemoteProtocolError for
  what the server sent, LocalProtocolError for what we asked at the wrong time. Errors are sticky
  and the buffer never passes its cap.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from vncaudit import rfb
from vncaudit.exceptions import LocalProtocolError, RemoteProtocolError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fuzz"))

import harness  # noqa: E402  (fuzz/harness.py: the atheris target, runnable without atheris)


@dataclass
class Transcript:
    name: str
    server: bytes  # every s2c chunk, concatenated
    client: bytes  # every c2s chunk, concatenated
    client_version: tuple[int, int] | None  # what the recording client answered
    answered: bool  # False: the recording client sent nothing (blacklisted)


def _load() -> list[Transcript]:
    out = []
    for path in sorted((ROOT / "tests" / "transcripts").glob("*.json")):
        doc = json.loads(path.read_text())
        parts = {"s2c": bytearray(), "c2s": bytearray()}
        for ex in doc["exchanges"]:
            parts[ex["dir"]] += bytes.fromhex(ex["hex"])
        cv = doc["client_version"]
        version = (int(cv[:3]), int(cv[4:])) if cv else None
        out.append(Transcript(path.stem, bytes(parts["s2c"]), bytes(parts["c2s"]), version,
                              cv is not None))
    return out


TRANSCRIPTS = _load()


@dataclass
class Replay:
    """Plays the client side of a recorded transcript: each choice is the recorded one."""

    t: Transcript
    client: rfb.RfbClient = field(init=False)
    events: list[object] = field(default_factory=list)
    sent: bytearray = field(default_factory=bytearray)
    stopped: bool = False

    def __post_init__(self) -> None:
        self.client = rfb.RfbClient(client_version=self.t.client_version)

    def _more(self, n: int) -> bytes | None:
        want = self.t.client[len(self.sent) : len(self.sent) + n]
        return want if len(want) == n else None

    def _act(self, event: object) -> None:
        c = self.client
        if isinstance(event, rfb.StartTls):
            c.tls_established()
        elif isinstance(event, rfb.SecurityTypes) and not event.server_chosen:
            pick = self._more(1)
            if pick is None:
                self.stopped = True
            else:
                c.select_security_type(pick[0])
        elif isinstance(event, rfb.VeNCryptSubtypes):
            pick = self._more(4)
            if pick is None:
                self.stopped = True
            else:
                c.select_vencrypt_subtype(int.from_bytes(pick, "big"))
        elif isinstance(event, rfb.TightCapabilities) and c.state is rfb.State.TIGHT_CHOOSE:
            pick = self._more(4)
            if pick is None:
                self.stopped = True
            else:
                c.select_tight_auth(int.from_bytes(pick, "big"))
        elif isinstance(event, (rfb.Failure, rfb.ServerInit, rfb.VncAuthChallenge,
                                rfb.Unsupported, rfb.ConnectionClosed)):
            self.stopped = True
        self.sent += c.data_to_send()
        if c.state is rfb.State.CLIENT_INIT:  # 3.3/3.7 None and SecurityResult ok: no event
            init = self._more(1)
            if init is None:
                self.stopped = True
            else:
                c.send_client_init(shared=init == b"\x01")
                self.sent += c.data_to_send()

    def feed(self, data: bytes) -> None:
        if self.stopped or not self.client.their_turn:
            return
        self.client.receive_data(data)
        while not self.stopped:
            event = self.client.next_event()
            if event is rfb.NEED_DATA:
                break
            self.events.append(event)
            self._act(event)
        self.sent += self.client.data_to_send()

    def run(self, chunks: list[bytes]) -> Replay:
        for chunk in [*chunks, b""]:
            self.feed(chunk)
        return self


REFERENCE = {t.name: Replay(t).run([t.server]) for t in TRANSCRIPTS}


@pytest.mark.parametrize("t", TRANSCRIPTS, ids=lambda t: t.name)
def test_transcript_replays_what_the_recorded_client_sent(t: Transcript) -> None:
    ref = REFERENCE[t.name]
    if t.answered:
        assert bytes(ref.sent) == t.client
    assert ref.events and isinstance(ref.events[0], rfb.ServerVersion)
    assert ref.client.buffered == 0  # every byte the server sent was understood


def test_transcript_facts() -> None:
    def last(name: str) -> object:
        return REFERENCE[name].events[-1]

    assert last("tigervnc-vencrypt-38") == rfb.VeNCryptSubtypes((0, 2), (258, 2, 257))
    assert REFERENCE["tigervnc-vencrypt-38"].events[1] == rfb.SecurityTypes((19, 19, 2))
    blacklisted = last("tigervnc-blacklisted")
    assert isinstance(blacklisted, rfb.Failure) and blacklisted.blacklisted
    init = last("xtightvnc-none-38")
    assert isinstance(init, rfb.ServerInit) and init.tight_interaction is not None
    assert len(init.tight_interaction) == 12
    for name in ("tigervnc-none-33", "tigervnc-none-37", "tigervnc-none-38", "x11vnc-none-38"):
        assert isinstance(last(name), rfb.ServerInit), name


class FragmentedTranscript(RuleBasedStateMachine):
    """Feed a real transcript in random pieces; the events so far are always a prefix of the
    events of the whole transcript, and at the end they are equal (and so are the bytes sent)."""

    @initialize(t=st.sampled_from(TRANSCRIPTS))
    def start(self, t: Transcript) -> None:
        self.t = t
        self.ref = REFERENCE[t.name]
        self.replay = Replay(t)
        self.pos = 0

    @precondition(lambda self: self.pos < len(self.t.server))
    @rule(n=st.integers(1, 40))
    def feed(self, n: int) -> None:
        self.replay.feed(self.t.server[self.pos : self.pos + n])
        self.pos += n

    @rule()
    def idle(self) -> None:
        """Nothing new arrives (and once everything has, the machine can still step)."""

    @invariant()
    def events_are_a_prefix(self) -> None:
        got = self.replay.events
        assert got == self.ref.events[: len(got)]
        assert self.ref.sent.startswith(self.replay.sent)

    def teardown(self) -> None:
        if not hasattr(self, "t"):
            return
        self.replay.feed(self.t.server[self.pos :])
        self.replay.feed(b"")
        assert self.replay.events == self.ref.events
        assert self.replay.sent == self.ref.sent


TestFragmentedTranscript = FragmentedTranscript.TestCase
TestFragmentedTranscript.settings = settings(max_examples=300, stateful_step_count=40,
                                             deadline=None)

LIMITS = rfb.Limits(max_reason_length=256, max_name_length=256, max_tight_capabilities=8,
                    max_buffer=2048)
BANNERS = [b"RFB 003.008\n", b"RFB 003.007\n", b"RFB 003.003\n", b"RFB 003.889\n",
           b"RFB 005.000\n", b"RFB 000.000\n", b"RFB 003.00"]


class RandomConversation(RuleBasedStateMachine):
    """Random server bytes and random client actions, in any order."""

    @initialize(banner=st.sampled_from([b"", *BANNERS]))
    def start(self, banner: bytes) -> None:
        self.client = rfb.RfbClient(LIMITS)
        self.error: RemoteProtocolError | None = None
        self.client.receive_data(banner)

    def _pull(self) -> None:
        if self.error is not None:
            with pytest.raises(RemoteProtocolError) as info:
                self.client.next_event()
            assert info.value is self.error  # sticky: the same error, again
            return
        try:
            for _ in range(1000):
                if self.client.next_event() is rfb.NEED_DATA:
                    return
            raise AssertionError("next_event never returned NEED_DATA")
        except RemoteProtocolError as exc:
            self.error = exc
            assert self.client.state is rfb.State.ERROR

    @rule(data=st.binary(max_size=300))
    def server_sends(self, data: bytes) -> None:
        self.client.receive_data(data)
        self._pull()

    @rule(data=st.sampled_from([b"\x01\x01", b"\x01\x02", b"\x02\x13\x02", b"\x00\x02\x00",
                                b"\x01", b"\x00\x00\x00\x00", b"\x00\x00\x00\x01\xff\xff\xff\xff",
                                bytes(16), bytes(24), b"\x01\x10"]))
    def server_sends_something_plausible(self, data: bytes) -> None:
        self.server_sends(data)

    @rule()
    def server_closes(self) -> None:
        self.client.receive_data(b"")
        self._pull()

    @rule(number=st.integers(0, 300))
    def select_type(self, number: int) -> None:
        self._local(self.client.select_security_type, number)

    @rule(subtype=st.sampled_from([2, 256, 257, 258, 260, 261, 999]))
    def select_subtype(self, subtype: int) -> None:
        self._local(self.client.select_vencrypt_subtype, subtype)

    @rule(code=st.integers(0, 3))
    def select_tight(self, code: int) -> None:
        self._local(self.client.select_tight_auth, code)

    @rule()
    def tls_up(self) -> None:
        self._local(self.client.tls_established)

    @rule()
    def client_init(self) -> None:
        self._local(self.client.send_client_init)

    @rule(response=st.binary(min_size=15, max_size=17))
    def vnc_response(self, response: bytes) -> None:
        self._local(self.client.send_vnc_auth_response, response)

    def _local(self, action: object, *args: object) -> None:
        try:
            action(*args)  # type: ignore[operator]
        except LocalProtocolError:
            pass  # our misuse, said as such; never anything else
        self.client.data_to_send()
        self._pull()

    @invariant()
    def bounded(self) -> None:
        assert self.client.buffered <= LIMITS.max_buffer


TestRandomConversation = RandomConversation.TestCase
TestRandomConversation.settings = settings(max_examples=300, stateful_step_count=30,
                                           deadline=None,
                                           suppress_health_check=[HealthCheck.too_slow])


# -- the fuzz harness: mutated transcripts, its seed corpus and every finding --------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TRANSCRIPTS), st.integers(0, 31), st.integers(0, 255), st.data())
def test_mutated_transcripts_keep_the_invariants(
    t: Transcript, flags: int, seed: int, data: st.DataObject
) -> None:
    stream = bytearray(t.server)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(stream)))
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if op == "flip" and i < len(stream):
            stream[i] = data.draw(st.integers(0, 255))
        elif op == "insert":
            stream[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del stream[i : i + data.draw(st.integers(1, 8))]
        else:
            del stream[i:]
    harness.check(bytes([flags & ~3, seed]) + bytes(stream))


FUZZ_INPUTS = sorted((ROOT / "fuzz" / "corpus").glob("*")) + sorted(
    (ROOT / "fuzz" / "regressions").glob("*")
)


@pytest.mark.parametrize("path", FUZZ_INPUTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_fuzz_inputs_replay(path: Path) -> None:
    harness.check(path.read_bytes())


# -- focused tests of the rfb behaviours the hostile farm and the fuzzer exercise -------------


def _events(client: rfb.RfbClient, data: bytes) -> list[object]:
    client.receive_data(data)
    out = []
    while (event := client.next_event()) is not rfb.NEED_DATA:
        out.append(event)
    return out


@pytest.mark.parametrize("types", [b"\x00", b"\x02\x00", b"\x00\x13\x02"])
def test_type_zero_in_a_non_empty_list_is_a_remote_error(types: bytes) -> None:
    client = rfb.RfbClient()
    with pytest.raises(RemoteProtocolError, match=r"type 0 \(Invalid\) in a list"):
        _events(client, b"RFB 003.008\n" + bytes([len(types)]) + types)
    assert client.state is rfb.State.ERROR


def test_type_zero_inside_tls_list_is_a_remote_error() -> None:
    client = rfb.RfbClient()
    _events(client, b"RFB 003.008\n\x01\x12")
    client.select_security_type(18)
    assert client.next_event() == rfb.StartTls(anonymous=True)
    client.tls_established()
    with pytest.raises(RemoteProtocolError, match="type 0"):
        _events(client, b"\x02\x01\x00")


def test_count_zero_is_still_a_failure_not_an_invalid_type() -> None:
    events = _events(rfb.RfbClient(), b"RFB 003.008\n\x00" + b"\x00\x00\x00\x02no")
    assert events[-1] == rfb.Failure("no", "security", b"no")


def test_out_of_turn_counts_only_while_the_server_must_wait() -> None:
    client = rfb.RfbClient()
    _events(client, b"RFB 003.008\n\x01\x02" + b"\xff" * 10)  # list, then 10 unasked bytes
    assert client.state is rfb.State.CHOOSE_TYPE and client.out_of_turn == 10
    client.select_security_type(2)  # now it is the server's turn: the bytes are its challenge
    assert client.out_of_turn == 0 and client.buffered == 10
