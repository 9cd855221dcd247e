"""Sending one alert (or one digest of a cycle's alerts) to one channel: a webhook, an e-mail
recipient, or standard output.

Owns: the wire formats and `deliver`, which always returns a `Outcome` (delivered, or the
failure as one line) and never raises for anything the receiver or the network does.

- Webhook: ``POST`` of a JSON object whose ``type`` is ``alert`` or ``digest`` and whose
  ``text`` is the message Slack, Mattermost and Teams incoming webhooks display (one line for
  an alert; for a digest its headline, the top items and the command listing all), with the
  whole alert under ``alert`` or the digest under ``digest``. Headers: ``Idempotency-Key``
  (the alert's or digest's key, the same on every retry), ``X-Vncaudit-Timestamp`` (Unix
  seconds) and, when the channel has a secret, ``X-Vncaudit-Signature:
  sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" with the secret>``. Only 2xx is delivered;
  redirects are not followed (a 3xx is a failure naming where it points, as a signed POST must
  not be re-sent elsewhere); the response body is never read. One deadline covers the whole
  request, so a receiver that trickles bytes cannot hold a delivery.
- E-mail: SMTP with STARTTLS (or implicit TLS, or none) and login, through the standard
  library in a worker thread. ``Message-ID`` is derived from the alert's key, so a retry is
  the same message to a mail system that drops duplicates; ``X-Vncaudit-Idempotency-Key``
  carries the key too.
- Stdout: one JSON object per line, flushed.

Must not: decide about retries (that is `outbox`), read the store, or log secrets.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import smtplib
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any, TextIO
from urllib.parse import urlsplit

from vncaudit import __version__
from vncaudit.watch.alerts import Alert
from vncaudit.watch.config import Channel, EmailChannel, SmtpSettings, WebhookChannel
from vncaudit.watch.digest import RULE_WORDS, Digest

Message = Alert | Digest

SIGNATURE_HEADER = "X-Vncaudit-Signature"
TIMESTAMP_HEADER = "X-Vncaudit-Timestamp"
KEY_HEADER = "Idempotency-Key"
MAIL_KEY_HEADER = "X-Vncaudit-Idempotency-Key"


@dataclass(frozen=True)
class Outcome:
    delivered: bool
    error: str | None = None  # one line, when not delivered
    retry_after: float | None = None  # seconds the receiver asked us to wait (429, 503)


def webhook_body(message: Message) -> bytes:
    kind = "digest" if isinstance(message, Digest) else "alert"
    doc = {"type": kind, "text": message.text, "source": "vncaudit", "version": __version__,
           "idempotency_key": message.key, kind: message.to_dict()}
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":")).encode()


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC of ``timestamp.body``."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str, body: bytes, signature: str) -> bool:
    """What a receiver runs: constant-time check of the signature header."""
    return hmac.compare_digest(sign(secret, timestamp, body), signature)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def _tls_reason(exc: BaseException) -> str | None:
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return _one_line(getattr(seen, "verify_message", None) or seen.reason or str(seen))
        seen = seen.__cause__ or seen.__context__
    return None


def _os_reason(exc: BaseException) -> str | None:
    """The operating system's words (Connection refused, Name or service not known) from
    somewhere in an exception's chain."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, OSError) and not isinstance(seen, socket.gaierror) \
                and seen.errno and seen.errno > 0:
            return os.strerror(seen.errno)  # asyncio's text names the address, not why
        if isinstance(seen, OSError) and seen.strerror:
            return _one_line(seen.strerror)
        seen = seen.__cause__ or seen.__context__
    return None


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), 3600.0)
    except ValueError:
        return None


def webhook_client(channel: WebhookChannel) -> Any:
    """An `httpx.AsyncClient` for one webhook channel, kept by the outbox worker so that a
    burst of alerts reuses one connection (and one TLS context)."""
    import httpx

    verify_with: ssl.SSLContext | bool = (ssl.create_default_context(cafile=channel.ca_file)
                                          if channel.ca_file else True)
    return httpx.AsyncClient(timeout=channel.timeout, verify=verify_with,
                             follow_redirects=False, trust_env=False)


async def post_webhook(channel: WebhookChannel, alert: Message, client: Any = None) -> Outcome:
    import httpx

    body = webhook_body(alert)
    stamp = str(int(time.time()))
    headers = {"Content-Type": "application/json", "User-Agent": f"vncaudit/{__version__}",
               KEY_HEADER: alert.key, TIMESTAMP_HEADER: stamp}
    if channel.secret is not None:
        headers[SIGNATURE_HEADER] = sign(channel.secret, stamp, body)
    host = urlsplit(channel.url).netloc
    own = client is None
    try:
        if own:
            client = webhook_client(channel)
    except (OSError, ssl.SSLError) as exc:
        return Outcome(False, f"cannot read ca_file {channel.ca_file}: {exc}")
    try:
        async with asyncio.timeout(channel.timeout):
            async with client.stream("POST", channel.url, content=body,
                                     headers=headers) as response:
                status = response.status_code
                reason = response.reason_phrase
                location = response.headers.get("location")
                wait = _retry_after(response.headers.get("retry-after"))
    except TimeoutError:
        return Outcome(False, f"{host}: no answer within {channel.timeout:g} s")
    except httpx.HTTPError as exc:
        tls = _tls_reason(exc)
        if tls is not None:
            return Outcome(False, f"{host}: TLS error: {tls}")
        if isinstance(exc, httpx.TimeoutException):
            return Outcome(False, f"{host}: no answer within {channel.timeout:g} s")
        reason = _os_reason(exc)
        if reason is not None and isinstance(exc, httpx.ConnectError):
            return Outcome(False, f"{host}: cannot connect: {reason}")
        return Outcome(False, f"{host}: {_one_line(reason or str(exc) or type(exc).__name__)}")
    except (OSError, ssl.SSLError, ValueError) as exc:
        tls = _tls_reason(exc)
        return Outcome(False, f"{host}: TLS error: {tls}" if tls else f"{host}: {exc}")
    finally:
        if own:
            await client.aclose()
    if 200 <= status < 300:
        return Outcome(True)
    if 300 <= status < 400:
        where = urlsplit(location).netloc or location if location else "nowhere"
        return Outcome(False, f"{host}: answered {status} {reason}, a redirect to "
                       f"{_one_line(where or '?', 80)} (not followed: configure the final URL)")
    return Outcome(False, f"{host}: answered {status} {reason}",
                   wait if status in (429, 503) else None)


def mail_message(alert: Message, to: str, sender: str) -> EmailMessage:
    if isinstance(alert, Digest):
        return digest_mail(alert, to, sender)
    msg = EmailMessage()
    msg["Subject"] = _one_line(f"vncaudit {alert.monitor}: {alert.address} {alert.tagged}", 200)
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = f"<{alert.key}@vncaudit.invalid>"
    msg[MAIL_KEY_HEADER] = alert.key
    lines = [*_paragraph(alert.text), "", f"monitor:  {alert.monitor}",
             f"service:  {alert.address}",
             f"rules:    {', '.join(alert.rules)}", f"severity: {alert.severity or 'none'}"]
    if alert.product:
        lines.append(f"product:  {alert.product}")
    lines.append(f"scan:     {alert.scan_id} (previous: {alert.previous_scan_id or 'none'})")
    if alert.details:
        lines += ["", "What changed:"]
        for detail in alert.details:
            lines += _paragraph(detail, "  ", "    ")
    if alert.findings:
        lines += ["", *_paragraph("Findings now: " + ", ".join(alert.findings), "", "  ")]
    lines += ["", f"See: vncaudit results {alert.scan_id}"]
    msg.set_content("\n".join(lines) + "\n")
    return msg


MAIL_WIDTH = 78  # a plain-text mail's lines (RFC 5322 2.1.1), read in 80 columns


def _paragraph(text: str, first: str = "", rest: str = "") -> list[str]:
    """`text` as lines of a mail body, broken between words (a command or a URL is never
    broken: a line holding one may be longer)."""
    import textwrap

    return textwrap.wrap(text, MAIL_WIDTH, initial_indent=first, subsequent_indent=rest,
                         break_long_words=False, break_on_hyphens=False) or [first]


def digest_mail(digest: Digest, to: str, sender: str) -> EmailMessage:
    """A cycle's digest as one mail: the counts, the top items, and the commands that list
    every alert it stands for."""
    msg = EmailMessage()
    msg["Subject"] = _one_line(f"vncaudit {digest.monitor}: {digest.title} (digest)", 200)
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = formatdate(localtime=True)
    msg["Message-ID"] = f"<{digest.key}@vncaudit.invalid>"
    msg[MAIL_KEY_HEADER] = digest.key
    width = max((len(RULE_WORDS.get(r, r)) for r, _ in digest.by_rule), default=0)
    lines = [*_paragraph(f"{digest.count} alerts in one cycle of monitor {digest.monitor}: "
                         f"more than the digest threshold ({digest.threshold}), so they come "
                         "as this one message. Every alert is kept in the store."), "",
             f"scan:     {digest.scan_id} (previous: {digest.previous_scan_id or 'none'})", "",
             "By kind (each alert under its main rule):",
             *(f"  {RULE_WORDS.get(r, r):<{width}}  {n:>7}" for r, n in digest.by_rule),
             "", "By severity:", *(f"  {s:<8}  {n:>7}" for s, n in digest.by_severity)]
    if digest.no_auth:
        lines += ["", f"Services that need no password: {digest.no_auth}"]
    lines += ["", f"Top {len(digest.top)}:"]
    for a in digest.top:
        lines += _paragraph(f"{a.address} {a.tagged}", "  ", "      ")
    lines += ["", "All of them:", *(f"  {c}" for c in digest.commands)]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def _smtp_send(smtp: SmtpSettings, msg: EmailMessage) -> None:
    context = ssl.create_default_context(cafile=smtp.ca_file) if smtp.security != "none" \
        else None
    client: smtplib.SMTP
    if smtp.security == "tls":
        client = smtplib.SMTP_SSL(smtp.host, smtp.port, timeout=smtp.timeout, context=context)
    else:
        client = smtplib.SMTP(smtp.host, smtp.port, timeout=smtp.timeout)
    with client:
        client.ehlo()
        if smtp.security == "starttls":
            if not client.has_extn("starttls"):
                raise smtplib.SMTPNotSupportedError("the server does not offer STARTTLS")
            client.starttls(context=context)
            client.ehlo()
        if smtp.username:
            client.login(smtp.username, smtp.password or "")
        client.send_message(msg)


def _smtp_error(smtp: SmtpSettings, exc: BaseException) -> str:
    where = f"{smtp.host}:{smtp.port}"
    tls = _tls_reason(exc)
    if tls is not None:
        return f"{where}: TLS error: {tls}"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return f"{where}: login refused: {exc.smtp_code} {_smtp_text(exc.smtp_error)}"
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        (code, text), = list(exc.recipients.values())[:1] or [(0, b"")]
        return f"{where}: recipient refused: {code} {_smtp_text(text)}"
    if isinstance(exc, smtplib.SMTPResponseException):
        return f"{where}: {exc.smtp_code} {_smtp_text(exc.smtp_error)}"
    if isinstance(exc, TimeoutError):
        return f"{where}: no answer within {smtp.timeout:g} s"
    if isinstance(exc, OSError) and exc.strerror:
        return f"{where}: cannot connect: {exc.strerror}"
    return f"{where}: {_one_line(str(exc) or type(exc).__name__)}"


def _smtp_text(value: bytes | str) -> str:
    text = value.decode(errors="replace") if isinstance(value, bytes) else str(value)
    return _one_line(text, 200)


async def send_mail(channel: EmailChannel, alert: Message) -> Outcome:
    msg = mail_message(alert, channel.to, channel.smtp.sender)
    try:
        # The thread ends by itself on the socket timeout; this bounds the wait for it.
        async with asyncio.timeout(channel.smtp.timeout * 3):
            await asyncio.to_thread(_smtp_send, channel.smtp, msg)
    except TimeoutError:
        return Outcome(False, f"{channel.smtp.host}:{channel.smtp.port}: no answer within "
                       f"{channel.smtp.timeout * 3:g} s")
    except (smtplib.SMTPException, OSError, ssl.SSLError, ValueError) as exc:
        return Outcome(False, _smtp_error(channel.smtp, exc))
    return Outcome(True)


def stdout_line(alert: Message) -> str:
    kind = "digest" if isinstance(alert, Digest) else "alert"
    doc: dict[str, Any] = {"type": kind, "text": alert.text, **alert.to_dict()}
    return json.dumps(doc, ensure_ascii=True, separators=(",", ":")) + "\n"


async def write_stdout(alert: Message, stream: TextIO | None = None) -> Outcome:
    out = stream or sys.stdout
    line = stdout_line(alert)

    def write() -> None:
        out.write(line)
        out.flush()

    try:
        # A full pipe must block a thread, not the event loop the scans run on.
        async with asyncio.timeout(60):
            await asyncio.to_thread(write)
    except TimeoutError:
        return Outcome(False, "standard output did not take the line within 60 s")
    except (OSError, ValueError) as exc:
        return Outcome(False, f"cannot write to standard output: {exc}")
    return Outcome(True)


async def deliver(channel: Channel, alert: Message, stdout: TextIO | None = None,
                  client: Any = None) -> Outcome:
    """Send `alert` (or a digest) through `channel` (a webhook through `client` when given);
    never raises for the receiver's faults."""
    if isinstance(channel, WebhookChannel):
        return await post_webhook(channel, alert, client)
    if isinstance(channel, EmailChannel):
        return await send_mail(channel, alert)
    return await write_stdout(alert, stdout)
