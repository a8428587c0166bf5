"""A strict local stand-in for Segment's HTTP Tracking API (/v1/batch), run as its own uvicorn process.

Strict like the real one where it matters to us: HTTP Basic auth with the write key as user name, JSON
content type, 500 KB per request and 32 KB per message (400 beyond), a batch of messages each with a type,
a messageId and a userId or anonymousId, an event name for tracks. It records what it accepts, and can be
told to misbehave through POST /_control:

    {"fail_next": 3, "status": 503}              the next 3 batch requests get 503
    {"fail_for": 5.0, "status": 500}             every batch request for 5 seconds gets 500
    {"fail_next": 1, "status": 429, "retry_after": "2"}
    {"hang_for": 30.0, "fail_next": 1}           the next request waits 30 s before answering (past timeouts)
    {"reset_connection": 2}                      the next 2 requests are cut off without an answer
    {"reject_message_ids": ["..."]}              a batch holding one of these gets 400, like a bad message
    {"reset": true}                              forget everything

GET /_received lists the accepted messages and every request's time and status.

    FAKE_SEGMENT_WRITE_KEY=key uvicorn tests.fake_segment:app --port 9999
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

MAX_REQUEST_BYTES = 500 * 1000
MAX_MESSAGE_BYTES = 32 * 1024


@dataclass
class State:
    messages: list[dict] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    requests: list[dict] = field(default_factory=list)
    fail_next: int = 0
    fail_until: float = 0.0
    status: int = 500
    retry_after: str | None = None
    hang_for: float = 0.0
    reset_connection: int = 0
    reject_ids: set[str] = field(default_factory=set)


STATE = State()


class _CutOff(Response):
    """Starts an answer, then drops the connection: the client sees a reset, not an HTTP status."""

    def __init__(self) -> None:
        super().__init__()

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"100")]})
        await send({"type": "http.response.body", "body": b'{"succ', "more_body": True})
        raise ConnectionResetError("fake Segment cuts the connection")


def _bad(reason: str, status: int = 400) -> JSONResponse:
    return JSONResponse({"success": False, "message": reason}, status_code=status)


def _check_auth(request: Request) -> bool:
    expected = os.environ.get("FAKE_SEGMENT_WRITE_KEY", "test-write-key")
    header = request.headers.get("authorization", "")
    if not header.startswith("Basic "):
        return False
    try:
        user, _, _password = base64.b64decode(header[6:]).decode().partition(":")
    except ValueError:
        return False
    return user == expected


def _check_message(message: object) -> str | None:
    if not isinstance(message, dict):
        return "message is not an object"
    if len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode()) > MAX_MESSAGE_BYTES:
        return "message over 32KB"
    if message.get("type") not in ("track", "identify", "group", "page", "screen", "alias"):
        return f"bad type {message.get('type')!r}"
    if not isinstance(message.get("messageId"), str):
        return "messageId missing"
    if not (message.get("userId") or message.get("anonymousId")):
        return "userId or anonymousId is required"
    if message["type"] == "track" and not message.get("event"):
        return "track event is missing name"
    if message["type"] == "group" and not message.get("groupId"):
        return "group is missing groupId"
    if message.get("messageId") in STATE.reject_ids:
        return f"message {message['messageId']} rejected"
    return None


async def batch(request: Request) -> Response:
    started = time.time()
    log = {"time": started, "status": None}
    STATE.requests.append(log)
    if STATE.reset_connection > 0:
        STATE.reset_connection -= 1
        log["status"] = "reset"
        return _CutOff()
    if STATE.hang_for and STATE.fail_next > 0:
        STATE.fail_next -= 1
        await asyncio.sleep(STATE.hang_for)
    elif STATE.fail_next > 0 or started < STATE.fail_until:
        STATE.fail_next = max(STATE.fail_next - 1, 0)
        log["status"] = STATE.status
        headers = {"Retry-After": STATE.retry_after} if STATE.retry_after else None
        return JSONResponse({"success": False}, status_code=STATE.status, headers=headers)
    response = await _accept(request)
    log["status"] = response.status_code
    return response


async def _accept(request: Request) -> Response:
    if not _check_auth(request):
        return _bad("invalid write key", 401)
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return _bad("content-type must be application/json")
    body = await request.body()
    if len(body) > MAX_REQUEST_BYTES:
        return _bad("request over 500KB")
    try:
        document = json.loads(body)
    except ValueError:
        return _bad("invalid JSON")
    if not isinstance(document, dict) or not isinstance(document.get("batch"), list) or not document["batch"]:
        return _bad('body must be {"batch": [messages]}')
    for message in document["batch"]:
        problem = _check_message(message)
        if problem:
            return _bad(problem)
    for message in document["batch"]:
        STATE.messages.append(message)
        STATE.counts[message["messageId"]] += 1
    return JSONResponse({"success": True})


async def control(request: Request) -> Response:
    global STATE
    order = await request.json()
    if order.get("reset"):
        STATE = State()
    STATE.status = order.get("status", STATE.status)
    STATE.retry_after = order.get("retry_after", STATE.retry_after)
    STATE.fail_next = order.get("fail_next", STATE.fail_next)
    STATE.hang_for = order.get("hang_for", STATE.hang_for)
    STATE.reset_connection = order.get("reset_connection", STATE.reset_connection)
    if "fail_for" in order:
        STATE.fail_until = time.time() + order["fail_for"]
    if "reject_message_ids" in order:
        STATE.reject_ids = set(order["reject_message_ids"])
    return JSONResponse({"ok": True})


async def received(request: Request) -> Response:
    return JSONResponse(
        {
            "messages": STATE.messages,
            "duplicates": sum(count - 1 for count in STATE.counts.values() if count > 1),
            "requests": STATE.requests,
        }
    )


async def count(request: Request) -> Response:
    return JSONResponse({"messages": len(STATE.messages), "requests": len(STATE.requests)})


app = Starlette(
    routes=[
        Route("/_count", count, methods=["GET"]),
        Route("/v1/batch", batch, methods=["POST"]),
        Route("/_control", control, methods=["POST"]),
        Route("/_received", received, methods=["GET"]),
    ]
)
