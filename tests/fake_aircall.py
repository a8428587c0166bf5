"""A local stand-in for Aircall's public REST API (v1), run as its own uvicorn process.

Like the real one where the engine depends on it: HTTP Basic auth (API ID and token), list endpoints with
`from`/`to`, `per_page` and `page`, a `meta` with `next_page_link`, the rate limit (a fixed window, 60 requests
a minute unless told otherwise) announced in `X-AircallApi-Limit/Remaining/Reset` on every answer and
enforced with 429, and webhooks that can be listed and created (each with a token).

    FAKE_AIRCALL_LIMIT=60 FAKE_AIRCALL_WINDOW=60 uvicorn tests.fake_aircall:app --port 9998

POST /_control {"calls": 120, "start": 1700000000, "spacing": 600, "fail_after": 5, "limit": 10, "window": 2}
generates calls (one every `spacing` seconds from `start`), and makes every request after the `fail_after`-th
answer 500 (an outage that outlasts the client's retries). `{"tag_calls": "follow-up"}` adds that tag to every
call, as agents do after the fact. GET /_stats tells requests, 429s and pages served.
"""

from __future__ import annotations

import base64
import calendar
import copy
import json
import os
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

API_ID = os.environ.get("FAKE_AIRCALL_ID", "api-id")
API_TOKEN = os.environ.get("FAKE_AIRCALL_TOKEN", "api-token")
FIXTURES = Path(__file__).parent / "fixtures"
CALL = json.loads((FIXTURES / "call.ended.json").read_text())["data"]
USER = json.loads((FIXTURES / "user.created.json").read_text())["data"]
CONTACT = json.loads((FIXTURES / "contact.created.json").read_text())["data"]
NUMBER = json.loads((FIXTURES / "number.created.json").read_text())["data"]


class State:
    def __init__(self) -> None:
        self.limit = int(os.environ.get("FAKE_AIRCALL_LIMIT", "60"))
        self.window = float(os.environ.get("FAKE_AIRCALL_WINDOW", "60"))
        self.window_start = time.time()
        self.used = 0
        self.requests = 0
        self.throttled = 0
        self.pages = 0
        self.fail_after: int | None = None
        self.calls: list[dict] = []
        self.users: list[dict] = []
        self.contacts: list[dict] = []
        self.numbers: list[dict] = [copy.deepcopy(NUMBER)]
        self.webhooks: list[dict] = []

    def generate(self, calls: int, start: int, spacing: int) -> None:
        self.calls = []
        for n in range(calls):
            call = copy.deepcopy(CALL)
            call["id"] = 3_000_000_000 + n
            call["started_at"] = start + n * spacing
            call["answered_at"] = start + n * spacing + 10
            call["ended_at"] = start + n * spacing + 120
            self.calls.append(call)
        created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(start + 60))
        self.users = [{**copy.deepcopy(USER), "id": 1_000 + n, "created_at": created} for n in range(3)]
        self.contacts = [{**copy.deepcopy(CONTACT), "id": 2_000 + n, "created_at": start + 120} for n in range(2)]
        self.numbers = [{**copy.deepcopy(NUMBER), "created_at": created}]


STATE = State()


def _quota_headers() -> dict[str, str]:
    return {
        "X-AircallApi-Limit": str(STATE.limit),
        "X-AircallApi-Remaining": str(max(STATE.limit - STATE.used, 0)),
        "X-AircallApi-Reset": str(int(STATE.window_start + STATE.window + 0.999)),
    }


def _gate(request: Request) -> Response | None:
    """Auth, the rate limit and the simulated outage, in that order."""
    header = request.headers.get("authorization", "")
    try:
        user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    except ValueError:
        user = password = ""
    if not header.startswith("Basic ") or (user, password) != (API_ID, API_TOKEN):
        return JSONResponse({"error": "Unauthorized", "troubleshoot": "Check your API key"}, status_code=401)
    now = time.time()
    if now >= STATE.window_start + STATE.window:
        STATE.window_start, STATE.used = now, 0
    STATE.requests += 1
    if STATE.used >= STATE.limit:
        STATE.throttled += 1
        return JSONResponse({"error": "Too Many Requests"}, status_code=429, headers=_quota_headers())
    STATE.used += 1
    if STATE.fail_after is not None and STATE.requests > STATE.fail_after:
        return JSONResponse({"error": "Internal Server Error"}, status_code=500, headers=_quota_headers())
    return None


def _time(value: object) -> float:
    if isinstance(value, int | float):
        return float(value)
    return float(calendar.timegm(time.strptime(str(value)[:19], "%Y-%m-%dT%H:%M:%S")))


def _listing(key: str, field: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> Response:
        refused = _gate(request)
        if refused is not None:
            return refused
        query = request.query_params
        per_page = min(int(query.get("per_page", 20)), 50)
        page = int(query.get("page", 1))
        chosen = getattr(STATE, key)
        if "from" in query:
            chosen = [i for i in chosen if _time(i[field]) >= int(query["from"])]
        if "to" in query:
            chosen = [i for i in chosen if _time(i[field]) <= int(query["to"])]
        if query.get("order") == "desc":
            chosen = list(reversed(chosen))
        shown = chosen[(page - 1) * per_page : page * per_page]
        STATE.pages += 1
        base = str(request.url).split("?")[0]
        others = "&".join(f"{k}={v}" for k, v in query.items() if k != "page")
        more = page * per_page < len(chosen)
        meta = {
            "count": len(shown),
            "total": len(chosen),
            "current_page": page,
            "per_page": per_page,
            "next_page_link": f"{base}?{others}&page={page + 1}" if more else None,
            "previous_page_link": f"{base}?{others}&page={page - 1}" if page > 1 else None,
        }
        return JSONResponse({key: shown, "meta": meta}, headers=_quota_headers())

    return endpoint


async def webhooks(request: Request) -> Response:
    refused = _gate(request)
    if refused is not None:
        return refused
    if request.method == "POST":
        body = await request.json()
        if not body.get("url") or not isinstance(body.get("events"), list):
            return JSONResponse({"error": "url and events are required"}, status_code=400)
        webhook = {
            "webhook_id": f"wh-{len(STATE.webhooks) + 1}",
            "direct_link": "https://api.aircall.io/v1/webhooks/x",
            "created_at": "2026-11-25T00:00:00.000Z",
            "url": body["url"],
            "active": True,
            "token": f"token{len(STATE.webhooks) + 1:04d}" + "c0ffee" * 4,
            "events": body["events"],
            "custom_name": body.get("custom_name"),
        }
        STATE.webhooks.append(webhook)
        return JSONResponse({"webhook": webhook}, status_code=201, headers=_quota_headers())
    meta = {"count": len(STATE.webhooks), "total": len(STATE.webhooks), "next_page_link": None}
    return JSONResponse({"webhooks": STATE.webhooks, "meta": meta}, headers=_quota_headers())


async def control(request: Request) -> Response:
    global STATE
    order = await request.json()
    if order.get("reset"):
        STATE = State()
    STATE.limit = order.get("limit", STATE.limit)
    STATE.window = order.get("window", STATE.window)
    STATE.fail_after = order.get("fail_after", STATE.fail_after)
    if "calls" in order:
        STATE.generate(order["calls"], order.get("start", 1_700_000_000), order.get("spacing", 600))
    if "tag_calls" in order:  # the calls change after the fact, as they do when agents tag them
        for call in STATE.calls:
            call["tags"] = [*call.get("tags", []), {"id": 99, "name": order["tag_calls"]}]
    return JSONResponse({"ok": True})


async def stats(request: Request) -> Response:
    return JSONResponse({"requests": STATE.requests, "throttled": STATE.throttled, "pages": STATE.pages,
                         "webhooks": len(STATE.webhooks)})  # fmt: skip


app = Starlette(
    routes=[
        Route("/v1/calls", _listing("calls", "started_at")),
        Route("/v1/users", _listing("users", "created_at")),
        Route("/v1/contacts", _listing("contacts", "created_at")),
        Route("/v1/numbers", _listing("numbers", "created_at")),
        Route("/v1/webhooks", webhooks, methods=["GET", "POST"]),
        Route("/_control", control, methods=["POST"]),
        Route("/_stats", stats),
    ]
)
