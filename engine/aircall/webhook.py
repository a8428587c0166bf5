"""POST /webhooks/aircall, the gateway: content type, body, JSON, token, envelope, selection, one durable append
of the raw webhook, answer. Mapping happens after the answer (engine.processing.worker).

Aircall disables a webhook that keeps failing, so everything stored or deliberately ignored gets a 2xx, and
the answer never waits on mapping or on Segment. A 5xx is given only when the outbox cannot take the write, so
that Aircall retries a webhook we could not keep. The token is checked before the envelope is explained: a
sender without it learns nothing about what the body should have been, and nothing of its body is echoed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.types import Receive, Scope, Send

from engine.aircall.envelope import EnvelopeError, parse_json, webhook_from_json
from engine.aircall.refused import RecentRefusals
from engine.aircall.selection import Selection
from engine.digits import ascii_digits
from engine.outbox import OutboxUnavailable, StoredWebhook, stored_webhook

log = logging.getLogger("engine.webhook")

PATH = "/webhooks/aircall"


class Refusal(Exception):
    def __init__(self, status: int, outcome: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.outcome, self.reason, self.headers = status, outcome, reason, headers


class _Gone(Exception):
    """The sender hung up before its body was complete: nobody is left to answer."""


@dataclass(frozen=True)
class Gateway:
    """What the webhook route needs, and nothing else of the server: built in the app's lifespan
    (engine.server.runtime), found in each request's state as "gateway"."""

    max_body_bytes: int
    body_timeout_seconds: float
    token_digests: tuple[bytes, ...]  # sha256 of each AIRCALL_WEBHOOK_TOKEN; none: every webhook is refused
    event_label: Callable[[str | None], str]  # events as bounded metric labels
    selection: Selection
    append: Callable[[StoredWebhook], Awaitable[bool]]  # the durable append (group commit); False: stored already
    refused: RecentRefusals  # what was answered and not stored, for the console
    observe: Callable[[str, str, float], None]  # an outcome's metrics: event, outcome, seconds


async def gateway(scope: Scope, receive: Receive, send: Send) -> None:
    """The webhook route as a plain ASGI endpoint, served ahead of Starlette's router (engine.server.app).

    It is the one path taken for every webhook, and Starlette's request, response and middleware objects cost
    as much as everything below together (bench/RESULTS.md): here the body is read and the answer written
    with ASGI messages directly. Every other route stays a Starlette one.
    """
    gate: Gateway = scope["state"]["gateway"]
    started = time.perf_counter()
    event = "unknown"
    named: str | None = None  # the event's name as sent, once the token matched: the console may show it then
    status, outcome, extra = 200, "accepted", ()
    payload: dict[str, object] = {"status": "accepted"}
    stored = None
    try:
        if scope["method"] != "POST":
            raise Refusal(405, "method_not_allowed", "method not allowed: use POST", {"Allow": "POST"})
        _check_headers(scope["headers"], gate.max_body_bytes)
        body = await _read_body(receive, gate.max_body_bytes, gate.body_timeout_seconds)
        try:
            document = parse_json(body)  # its errors name a position, never the content
        except EnvelopeError as exc:
            raise Refusal(400, "bad_request", str(exc)) from None
        event = gate.event_label(_text_field(document, "event"))  # a known event's name, else "other"
        _authenticate(gate, document)
        named = _text_field(document, "event") or "(no event name)"
        try:
            webhook = webhook_from_json(document)  # its errors may quote the body: only once authenticated
        except EnvelopeError as exc:
            raise Refusal(400, "bad_request", str(exc)) from None
        skip = gate.selection.skip_reason(webhook)
        if skip is not None:
            outcome, payload = "ignored", {"status": "ignored", "reason": skip}
            _keep_refused(scope, 200, outcome, skip, named)
        else:
            stored = stored_webhook(webhook, body)
            try:
                new = await gate.append(stored)
            except OutboxUnavailable as exc:
                log.error("outbox unavailable", extra={"fields": {"error": str(exc)}})
                raise Refusal(503, "unavailable", "outbox unavailable; retry later", {"Retry-After": "5"}) from None
            if not new:
                payload["duplicate"] = True
    except Refusal as refusal:
        status, outcome, extra = refusal.status, refusal.outcome, tuple((refusal.headers or {}).items())
        payload = {"status": "error", "reason": refusal.reason}
        _keep_refused(scope, status, outcome, refusal.reason, named)
    except _Gone:
        _note(scope, started, event, 400, "bad_request", reason="client disconnected before the body was complete")
        return
    if "reason" in payload:
        _note(scope, started, event, status, outcome, reason=payload["reason"])
    elif stored is not None:  # its key: processing's lines about it carry the same
        _note(scope, started, event, status, outcome, webhook_key=stored.key, duplicate="duplicate" in payload)
    else:
        _note(scope, started, event, status, outcome)
    await _answer(send, status, payload, extra)


def _keep_refused(scope: Scope, status: int, outcome: str, reason: str, named: str | None) -> None:
    """For the console's list of what was answered and not stored (engine.aircall.refused): in memory, never a
    write. A sender that hung up mid-body got no answer: it is in the log and the metrics only."""
    client = scope.get("client")
    scope["state"]["gateway"].refused.note(status, outcome, reason, named, client[0] if client else None)


def _authenticate(gate: Gateway, document: object) -> None:
    """The token, checked before anything of the body is explained: someone without it learns from the answer
    and the log that they were refused, and nothing of how their body would have been read."""
    if not gate.token_digests:
        raise Refusal(401, "unauthorized", "no token is configured: set AIRCALL_WEBHOOK_TOKEN")
    token = _text_field(document, "token")
    if token is None:
        raise Refusal(401, "unauthorized", "missing token")
    if not token_matches(token, gate.token_digests):
        raise Refusal(401, "unauthorized", "wrong token")


def _text_field(document: object, name: str) -> str | None:
    value = document.get(name) if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def token_matches(given: str, digests: tuple[bytes, ...]) -> bool:
    """Constant time: every configured token is compared, digests make the lengths equal."""
    candidate = hashlib.sha256(given.encode()).digest()
    matched = False
    for digest in digests:
        matched |= hmac.compare_digest(candidate, digest)
    return matched


def _check_headers(headers: list[tuple[bytes, bytes]], limit: int) -> None:
    """The content type, and the declared length when there is one (refused at once past `limit`)."""
    media_type, declared = None, None
    for name, value in headers:  # the first of each, as Starlette's request headers read them
        if name == b"content-type" and media_type is None:
            media_type = value.split(b";", 1)[0].strip().lower()
        elif name == b"content-length" and declared is None:
            declared = value
    if media_type != b"application/json":
        raise Refusal(415, "unsupported_media_type", "content type must be application/json")
    if declared is None:
        return
    if not ascii_digits(declared):
        raise Refusal(400, "bad_request", "invalid Content-Length")
    if int(declared) > limit:
        raise Refusal(413, "too_large", f"body over {limit} bytes")


async def _read_body(receive: Receive, limit: int, timeout: float) -> bytes:
    """The body, refused as soon as it passes `limit` bytes or takes longer than `timeout` seconds to arrive."""
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise _Gone
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise Refusal(413, "too_large", f"body over {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise Refusal(408, "timeout", f"body not received within {timeout:g}s") from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _note(scope: Scope, started: float, event: str, status: int, outcome: str, **more: object) -> None:
    """The outcome's metrics and its log line (`more`: the reason of a refusal, or the stored webhook's key)."""
    seconds = time.perf_counter() - started
    scope["state"]["gateway"].observe(event, outcome, seconds)
    # Behind a trusted proxy (--forwarded-allow-ips) uvicorn has put the original sender here.
    client = scope.get("client")
    fields = {"event": event, "status": status, "outcome": outcome, **more}
    fields |= {"ms": round(seconds * 1000, 1), "client": client[0] if client else None}
    log.info("webhook", extra={"fields": fields})


async def _answer(send: Send, status: int, payload: dict[str, object], extra: tuple[tuple[str, str], ...]) -> None:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
