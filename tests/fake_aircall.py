"""A local stand-in for Aircall's public REST API (v1), run as its own uvicorn process.

Strict where the engine depends on Aircall:
- HTTP Basic auth with the API ID and token (401 otherwise);
- list endpoints (/v1/calls, /users, /contacts, /numbers) with `page`, `per_page` (at most 50) and
  `order` (asc or desc, by creation), and `from`/`to` (unix seconds, both included) on calls, users and
  contacts, not on numbers; a `meta` with count, total, current_page, per_page, next_page_link and
  previous_page_link;
- the 10,000-object ceiling: a page that starts past it is a 400, although `next_page_link` still offers it;
- the rate limit, a fixed window (60 requests a minute unless told otherwise), announced in
  `X-AircallApi-Limit/Remaining/Reset` on every answer and enforced with 429;
- webhooks that can be listed and created, each with a token;
- a call's transcription (`/v1/calls/{id}/transcription`, the hour-long sample's content for any call; 404 for
  a call id that is not a number), as conversation-intelligence webhooks that only refer to it need.

    FAKE_AIRCALL_LIMIT=60 FAKE_AIRCALL_WINDOW=60 uvicorn tests.fake_aircall:app --port 9998

POST /_control with any of:
- `{"reset": true}`: empty account (one number), default limits;
- `{"calls": 120, "start": 1700000000, "spacing": 600}`: 120 calls, one every 600 s from start, with 3 users,
  2 contacts and 1 number created just after start (the small account of the first tests);
- `{"calls": [{"count": 12000, "start": T, "spacing": 7}, ...]}` and the same for `users`, `contacts`,
  `numbers`: objects created at those times, any number of them (kept compact: 100,000 calls are cheap);
- `{"limit": 10, "window": 2}`: the rate limit; `{"spend": 5}`: another integration spends 5 requests now;
  `{"others": 1}`: other integrations spend 1 request after each of ours, so our last headers are stale;
- `{"advance": 30}`: the fake's clock moves 30 s ahead (tests that only pretend to wait move it with theirs);
- `{"ceiling": 10000}`, `{"ignore_range": true}` (from/to ignored, as an API that does not filter),
  `{"cap_total": true}` (meta.total says no more than the ceiling) and `{"no_total": true}` (no meta.total);
- `{"fail_after": 5}`: every request after the 5th answers 500 (an outage that outlasts the retries);
- `{"garbage": "html"}` (or `cut`, `list`, `strings`): the next list request is answered that, with a 200;
  `{"garbage": "huge_total"}`: the next page says 10**15 objects match;
- `{"retry_after": "99999999999"}` (429s say it) and `{"reset_header": "99999999999"}` (every answer's
  X-AircallApi-Reset): answers no client should take at their word;
- `{"stall_after": 7}`: the 8th list request and those after it hang (until a reset), so a test can kill the
  client in the middle of a page;
- `{"tag_calls": "follow-up"}`: every call gains that tag, as agents do after the fact.

GET /_stats: requests (and when each came, by the fake's clock), 429s, pages served, 400s past the ceiling,
requests stalled, objects served (and how many distinct) per resource, and the fake's clock.
"""

from __future__ import annotations

import asyncio
import base64
import bisect
import contextlib
import copy
import json
import os
import time
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from engine.aircall.api import Clock

API_ID = os.environ.get("FAKE_AIRCALL_ID", "api-id")
API_TOKEN = os.environ.get("FAKE_AIRCALL_TOKEN", "api-token")
FIXTURES = Path(__file__).parent / "fixtures"
TEMPLATES = {
    "calls": json.loads((FIXTURES / "call.ended.json").read_text())["data"],
    "users": json.loads((FIXTURES / "user.created.json").read_text())["data"],
    "contacts": json.loads((FIXTURES / "contact.created.json").read_text())["data"],
    "numbers": json.loads((FIXTURES / "number.created.json").read_text())["data"],
}
FIRST_ID = {"calls": 3_000_000_000, "users": 1_000, "contacts": 2_000, "numbers": 745_821}
FILTERED = {"calls": True, "users": True, "contacts": True, "numbers": False}  # takes from/to
CEILING = 10_000


def _iso(moment: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(moment))


class Listing:
    """One resource's objects as (creation time, id), sorted: materialized only when a page is served."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[tuple[int, int]] = []
        self.times: list[int] = []

    def fill(self, specs: list[dict[str, int]]) -> None:
        rows, next_id = [], FIRST_ID[self.name]
        for spec in specs:
            for n in range(spec["count"]):
                rows.append((spec["start"] + n * spec.get("spacing", 1), next_id))
                next_id += 1
        self.rows = sorted(rows)
        self.times = [t for t, _ in self.rows]

    def between(self, low: int | None, high: int | None) -> list[tuple[int, int]]:
        first = 0 if low is None else bisect.bisect_left(self.times, low)
        last = len(self.rows) if high is None else bisect.bisect_right(self.times, high)
        return self.rows[first:last]

    def materialize(self, moment: int, ident: int, extra_tags: list[dict]) -> dict[str, Any]:
        obj = copy.deepcopy(TEMPLATES[self.name])
        obj["id"] = ident
        if self.name == "calls":
            obj.update(started_at=moment, answered_at=moment + 10, ended_at=moment + 120)
            if extra_tags:
                obj["tags"] = [*obj.get("tags", []), *extra_tags]
        elif self.name == "contacts":
            obj["created_at"] = moment  # Aircall gives contacts' times in unix seconds...
        else:
            obj["created_at"] = _iso(moment)  # ...and users' and numbers' in ISO 8601
        return obj


class State:
    def __init__(self) -> None:
        self.limit = int(os.environ.get("FAKE_AIRCALL_LIMIT", "60"))
        self.window = float(os.environ.get("FAKE_AIRCALL_WINDOW", "60"))
        self.offset = 0.0  # the fake's clock: real time plus what tests advanced it by
        self.window_start = self.now()
        self.used = 0
        self.requests = 0
        self.list_requests = 0
        self.throttled = 0
        self.pages = 0
        self.past_ceiling = 0
        self.stalled = 0
        self.fail_after: int | None = None
        self.stall_after: int | None = None
        self.release = asyncio.Event()
        self.ceiling = CEILING
        self.ignore_range = False
        self.cap_total = False
        self.no_total = False
        self.others = 0  # requests other integrations spend after each of ours: our view of the quota goes stale
        self.arrivals: list[float] = []  # when each request came, by the fake's clock
        self.extra_tags: list[dict] = []
        self.listings = {name: Listing(name) for name in TEMPLATES}
        self.listings["numbers"].rows = [(1_707_730_211, FIRST_ID["numbers"])]  # the sample number, 2024-02-12
        self.listings["numbers"].times = [1_707_730_211]
        self.served: dict[str, int] = {name: 0 for name in TEMPLATES}
        self.distinct: dict[str, set[int]] = {name: set() for name in TEMPLATES}
        self.webhooks: list[dict] = []
        self.enabled = 0  # webhooks turned back on (PUT active: true)
        self.transcript_padding = 0  # bytes added to every transcription answer
        self.garbage: str | None = None  # the next list request's answer: html, cut, list, strings, huge_total
        self.retry_after: str | None = None  # a Retry-After of its own on 429s ("99999999999": a broken proxy)
        self.reset_header: str | None = None  # X-AircallApi-Reset as given, instead of the window's end

    def now(self) -> float:
        return time.time() + self.offset

    def small_account(self, calls: int, start: int, spacing: int) -> None:
        self.listings["calls"].fill([{"count": calls, "start": start, "spacing": spacing}])
        self.listings["users"].fill([{"count": 3, "start": start + 60}])
        self.listings["contacts"].fill([{"count": 2, "start": start + 120}])
        self.listings["numbers"].fill([{"count": 1, "start": start + 60}])


STATE = State()


class PretendClock(Clock):
    """The engine's clock (engine.aircall.api.Clock) for tests and benchmarks: it jumps ahead instead of
    sleeping, and moves the fake's clock by as much (`aircall` is the harness's FakeAircall), so that an hour of
    rate-limited backfill takes a second and the fake's windows and resets agree with the engine's waits."""

    def __init__(self, aircall: Any) -> None:
        self.aircall = aircall
        self.offset = 0.0
        self.waits: list[float] = []

    def now(self) -> float:
        return time.time() + self.offset

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.offset += seconds
            self.waits.append(seconds)
            self.aircall.control(advance=seconds)


def _quota_headers() -> dict[str, str]:
    headers = {
        "X-AircallApi-Limit": str(STATE.limit),
        "X-AircallApi-Remaining": str(max(STATE.limit - STATE.used, 0)),
        "X-AircallApi-Reset": STATE.reset_header or str(int(STATE.window_start + STATE.window + 0.999)),
    }
    if STATE.retry_after is not None and STATE.used >= STATE.limit:
        headers["Retry-After"] = STATE.retry_after
    return headers


def _roll_window() -> None:
    now = STATE.now()
    if now >= STATE.window_start + STATE.window:
        STATE.window_start, STATE.used = now, 0


def _gate(request: Request) -> Response | None:
    """Auth, the rate limit and the simulated outage, in that order."""
    header = request.headers.get("authorization", "")
    try:
        user, _, password = base64.b64decode(header.removeprefix("Basic ")).decode().partition(":")
    except ValueError:
        user = password = ""
    if not header.startswith("Basic ") or (user, password) != (API_ID, API_TOKEN):
        return JSONResponse({"error": "Unauthorized", "troubleshoot": "Check your API key"}, status_code=401)
    _roll_window()
    STATE.requests += 1
    STATE.arrivals.append(STATE.now())
    if STATE.used >= STATE.limit:
        STATE.throttled += 1
        return JSONResponse({"error": "Too Many Requests"}, status_code=429, headers=_quota_headers())
    STATE.used += 1
    if STATE.fail_after is not None and STATE.requests > STATE.fail_after:
        return JSONResponse({"error": "Internal Server Error"}, status_code=500, headers=_quota_headers())
    return None


def _bad(message: str) -> Response:
    return JSONResponse({"error": "Bad Request", "troubleshoot": message}, status_code=400, headers=_quota_headers())


def _listing(key: str):  # type: ignore[no-untyped-def]
    async def endpoint(request: Request) -> Response:
        refused = _gate(request)
        if refused is not None:
            return refused
        STATE.list_requests += 1
        if STATE.garbage is not None and STATE.garbage != "huge_total":
            garbage, STATE.garbage = STATE.garbage, None
            return _garbage(garbage, key)
        if STATE.stall_after is not None and STATE.list_requests > STATE.stall_after:
            STATE.stalled += 1
            release = STATE.release
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(release.wait(), timeout=120)
            return JSONResponse({"error": "Service Unavailable"}, status_code=503)
        query = request.query_params
        try:
            per_page = min(int(query.get("per_page", 20)), 50)
            page = int(query.get("page", 1))
            low = int(query["from"]) if "from" in query else None
            high = int(query["to"]) if "to" in query else None
        except ValueError:
            return _bad("page, per_page, from and to are whole numbers (from and to: unix seconds)")
        order = query.get("order", "asc")
        if order not in ("asc", "desc") or page < 1 or per_page < 1:
            return _bad("order is asc or desc; page and per_page start at 1")
        listing = STATE.listings[key]
        if not FILTERED[key] or STATE.ignore_range:
            low = high = None
        chosen = listing.between(low, high)
        if order == "desc":
            chosen = chosen[::-1]
        first = (page - 1) * per_page
        if first >= STATE.ceiling:
            STATE.past_ceiling += 1
            return _bad(f"lists stop at {STATE.ceiling} items: narrow the query with from and to")
        shown = chosen[first : first + per_page]
        STATE.pages += 1
        STATE.served[key] += len(shown)
        STATE.distinct[key].update(ident for _, ident in shown)
        base = str(request.url).split("?")[0]
        others = "&".join(f"{k}={v}" for k, v in query.items() if k != "page")
        total = min(len(chosen), STATE.ceiling) if STATE.cap_total else len(chosen)
        meta = {
            "count": len(shown),
            "total": total,
            "current_page": page,
            "per_page": per_page,
            "next_page_link": f"{base}?{others}&page={page + 1}" if first + per_page < len(chosen) else None,
            "previous_page_link": f"{base}?{others}&page={page - 1}" if page > 1 else None,
        }
        if STATE.no_total:
            del meta["total"]
        if STATE.garbage == "huge_total":
            STATE.garbage = None
            meta["total"] = 10**15
        objects = [listing.materialize(moment, ident, STATE.extra_tags) for moment, ident in shown]
        headers = _quota_headers()
        STATE.used = min(STATE.used + STATE.others, STATE.limit)  # after the answer: its headers are out of date
        return JSONResponse({key: objects, "meta": meta}, headers=headers)

    return endpoint


TRANSCRIPT = json.loads((FIXTURES / "transcription.created--long_call.json").read_text())["data"]


async def transcription(request: Request) -> Response:
    refused = _gate(request)
    if refused is not None:
        return refused
    call_id = request.path_params["call_id"]
    if not call_id.isdigit():
        return JSONResponse({"error": "Not Found"}, status_code=404, headers=_quota_headers())
    STATE.served["transcriptions"] = STATE.served.get("transcriptions", 0) + 1
    body = {"id": TRANSCRIPT["id"], "call_id": int(call_id), "call_created_at": TRANSCRIPT.get("call_created_at"),
            "type": "call", "content": TRANSCRIPT["content"]}  # fmt: skip
    if STATE.transcript_padding:  # a transcript no call has: what a broken API could send
        body["padding"] = "x" * STATE.transcript_padding
    return JSONResponse({"transcription": body}, headers=_quota_headers())


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


async def webhook(request: Request) -> Response:
    """PUT /v1/webhooks/{id}: what Aircall's update takes, `active` among it."""
    refused = _gate(request)
    if refused is not None:
        return refused
    found = next((w for w in STATE.webhooks if w["webhook_id"] == request.path_params["webhook_id"]), None)
    if found is None:
        return JSONResponse({"error": "Not found", "troubleshoot": "no such webhook"}, status_code=404)
    body = await request.json()
    if not isinstance(body, dict) or not set(body) <= {"active", "custom_name", "url", "events"}:
        return JSONResponse({"error": "unknown fields"}, status_code=400)
    found.update(body)
    STATE.enabled += body.get("active") is True
    return JSONResponse({"webhook": found}, headers=_quota_headers())


def _garbage(kind: str, key: str) -> Response:
    """What a proxy, a cut connection or a broken deployment can give instead of a page, with a 200."""
    if kind == "html":
        return Response("<html><body>502 Bad Gateway</body></html>", media_type="text/html", headers=_quota_headers())
    if kind == "cut":
        return Response('{"' + key + '": [{"id": 1, "sta', media_type="application/json", headers=_quota_headers())
    if kind == "list":
        return JSONResponse([{"id": 1}], headers=_quota_headers())
    return JSONResponse({key: ["a call", None], "meta": {"total": 2}}, headers=_quota_headers())  # strings


def _specs(value: Any) -> list[dict[str, int]]:
    return value if isinstance(value, list) else [value]


async def control(request: Request) -> Response:
    global STATE
    order = await request.json()
    if order.get("reset"):
        STATE.release.set()  # stalled requests end
        STATE = State()
    settable = ("limit", "window", "fail_after", "stall_after", "ceiling", "ignore_range", "cap_total", "no_total",
                "retry_after", "reset_header", "garbage", "transcript_padding")  # fmt: skip
    for name in (*settable, "others"):
        if name in order:
            setattr(STATE, name, order[name])
    if "stall_after" in order and order["stall_after"] is None:
        STATE.release.set()  # the requests held are let go (with a 503: their client is gone)
        STATE.release = asyncio.Event()
    if "advance" in order:
        STATE.offset += order["advance"]
    if "spend" in order:
        _roll_window()
        STATE.used += order["spend"]
    if isinstance(order.get("calls"), int):
        STATE.small_account(order["calls"], order.get("start", 1_700_000_000), order.get("spacing", 600))
    for name in TEMPLATES:
        if name in order and not isinstance(order[name], int):
            STATE.listings[name].fill(_specs(order[name]))
    if "disable_webhooks" in order:  # what Aircall does to a webhook whose deliveries keep failing
        for hook in STATE.webhooks:
            hook["active"] = False
    if "add_webhook" in order:  # one made in the dashboard: its token is the one given
        STATE.webhooks.append({"webhook_id": f"wh-{len(STATE.webhooks) + 1}", "active": True, "events": [],
                               "url": "https://bridge.example/webhooks/aircall", **order["add_webhook"]})  # fmt: skip
    if "tag_calls" in order:  # the calls change after the fact, as they do when agents tag them
        STATE.extra_tags.append({"id": 99, "name": order["tag_calls"]})
    return JSONResponse({"ok": True})


async def stats(request: Request) -> Response:
    return JSONResponse(
        {
            "requests": STATE.requests,
            "throttled": STATE.throttled,
            "pages": STATE.pages,
            "past_ceiling": STATE.past_ceiling,
            "stalled": STATE.stalled,
            "served": STATE.served,
            "distinct": {name: len(ids) for name, ids in STATE.distinct.items()},
            "webhooks": len(STATE.webhooks),
            "enabled": STATE.enabled,
            "now": STATE.now(),
            "arrivals": STATE.arrivals,
        }
    )


app = Starlette(
    routes=[
        *(Route(f"/v1/{name}", _listing(name)) for name in TEMPLATES),
        Route("/v1/webhooks", webhooks, methods=["GET", "POST"]),
        Route("/v1/webhooks/{webhook_id}", webhook, methods=["PUT"]),
        Route("/v1/calls/{call_id}/transcription", transcription),
        Route("/_control", control, methods=["POST"]),
        Route("/_stats", stats),
    ]
)
