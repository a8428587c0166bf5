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
import logging
import time
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from engine.aircall.envelope import EnvelopeError, parse_json, webhook_from_json
from engine.outbox import OutboxUnavailable, stored_webhook

if TYPE_CHECKING:
    from engine.server.runtime import Runtime

log = logging.getLogger("engine.webhook")


class Refusal(Exception):
    def __init__(self, status: int, outcome: str, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status, self.outcome, self.reason, self.headers = status, outcome, reason, headers


async def receive(request: Request) -> Response:
    runtime: Runtime = request.state.runtime
    started = time.perf_counter()
    event = "unknown"
    try:
        _check_content_type(request)
        body = await _read_body(request, runtime.settings.max_body_bytes, runtime.settings.body_timeout_seconds)
        try:
            document = parse_json(body)  # its errors name a position, never the content
        except EnvelopeError as exc:
            raise Refusal(400, "bad_request", str(exc)) from None
        event = runtime.event_label(_text_field(document, "event"))  # a known event's name, else "other"
        _authenticate(runtime, document)
        try:
            webhook = webhook_from_json(document)  # its errors may quote the body: only once authenticated
        except EnvelopeError as exc:
            raise Refusal(400, "bad_request", str(exc)) from None
        skip = runtime.selection.skip_reason(webhook)
        if skip is not None:
            return _answer(request, started, event, 200, "ignored", {"status": "ignored", "reason": skip})
        try:
            new = await runtime.committer.append(stored_webhook(webhook, body))
        except OutboxUnavailable as exc:
            log.error("outbox unavailable: %s", exc)
            raise Refusal(503, "unavailable", "outbox unavailable; retry later", {"Retry-After": "5"}) from None
        runtime.processor.wake()
        payload: dict[str, object] = {"status": "accepted"}
        if not new:
            payload["duplicate"] = True
        return _answer(request, started, event, 200, "accepted", payload)
    except Refusal as refusal:
        return _answer(
            request, started, event, refusal.status, refusal.outcome,
            {"status": "error", "reason": refusal.reason}, refusal.headers,
        )  # fmt: skip


def _authenticate(runtime: Runtime, document: object) -> None:
    """The token, checked before anything of the body is explained: someone without it learns from the answer
    and the log that they were refused, and nothing of how their body would have been read."""
    if not runtime.settings.webhook_tokens:
        raise Refusal(401, "unauthorized", "no token is configured: set AIRCALL_WEBHOOK_TOKEN")
    token = _text_field(document, "token")
    if token is None:
        raise Refusal(401, "unauthorized", "missing token")
    if not token_matches(token, runtime.token_digests):
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


def _check_content_type(request: Request) -> None:
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise Refusal(415, "unsupported_media_type", "content type must be application/json")


async def _read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused as soon as it passes `limit` bytes or takes longer than `timeout` seconds to arrive."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise Refusal(400, "bad_request", "invalid Content-Length")
        if int(declared) > limit:
            raise Refusal(413, "too_large", f"body over {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise Refusal(413, "too_large", f"body over {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise Refusal(408, "timeout", f"body not received within {timeout:g}s") from None
    except ClientDisconnect:
        raise Refusal(400, "bad_request", "client disconnected before the body was complete") from None
    return b"".join(chunks)


def _answer(
    request: Request,
    started: float,
    event: str,
    status: int,
    outcome: str,
    payload: dict[str, object],
    headers: dict[str, str] | None = None,
) -> Response:
    seconds = time.perf_counter() - started
    request.state.runtime.metrics.webhook(event, outcome, seconds)
    detail = payload.get("reason") or ("duplicate" if payload.get("duplicate") else "stored")
    # Behind a trusted proxy (--forwarded-allow-ips) uvicorn has put the original sender here.
    client = request.client.host if request.client else "-"
    log.info(
        "webhook event=%s status=%d outcome=%s %s ms=%.1f client=%s",
        event, status, outcome, detail, seconds * 1000, client,
    )  # fmt: skip
    return JSONResponse(payload, status_code=status, headers=headers)
