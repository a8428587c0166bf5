"""The web console, mounted at /console by engine.server.app: status, recent webhooks, dead letters, the playground.

Off (404, as if there were no such path) unless ENGINE_CONSOLE_TOKEN is set. A request without a signed-in
session gets nothing: pages send it to the sign-in form, /console/api/ answers 401, and nothing it sent is
echoed or logged. Every POST checks the session's CSRF token. Every answer forbids framing and any script,
style or image from elsewhere (Content-Security-Policy), and is not cached.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

from engine.aircall.events import is_event_name
from engine.aircall.webhook import PATH
from engine.config import FIRST_RUN_CONSOLE_TOKEN, is_loopback
from engine.console import queries
from engine.console.auth import CSRF_FIELD, CSRF_HEADER, Gate, Session, csrf_matches
from engine.console.pages import STATIC, Pages
from engine.console.playground import FILE_NAME, Playground, PlaygroundRefused
from engine.digits import ascii_digits
from engine.mapping.findings import MappingError, MappingsFolderError
from engine.mapping.load import load_mappings, mapping_files
from engine.mapping.validate import find_fixtures
from engine.outbox import ALL_SESSIONS, WEBHOOK_OUTCOMES, OutboxRefused, OutboxUnavailable, WebhookFilter
from engine.processing.replay import replay_dead_letters

log = logging.getLogger("engine.console")

BADGE_SECONDS = 30.0  # how old the navigation's dead-letter count may be
WRONG_TOKEN_DELAY = 1.0  # seconds before a wrong token is answered: guessing costs time
MAX_FORM_BYTES = 512 * 1024
MAX_API_BYTES = 2 * 1024 * 1024
SECURITY_HEADERS = [
    (b"content-security-policy",
     b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
     b"form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]  # fmt: skip

Handler = Callable[["Console", Request, Session], Awaitable[Response]]
# What a read of the outbox raises when it cannot be read now (PostgreSQL away, the file locked or gone).
UNREADABLE = (OutboxUnavailable, OutboxRefused, sqlite3.Error, OSError)


def page(handler: Handler) -> Callable[[Console, Request], Awaitable[Response]]:
    """A page: with a signed-in session, else a redirect to the sign-in form (which says nothing of the page)."""

    @functools.wraps(handler)
    async def guarded(self: Console, request: Request) -> Response:
        session = self.gate.session(request)
        if session is None or not session.signed_in:
            return RedirectResponse(f"{_base(request)}/sign-in", status_code=303)
        try:
            if await self.ended(session):
                return self._signed_out(request)
            return await handler(self, request, session)
        except UNREADABLE as exc:
            log.error("console: outbox unreadable: %s", exc)
            text = f"The outbox cannot be read now: {exc}"
            return await self._render(request, session, "missing.html", {"what": None, "text": text}, 503)

    return guarded


def api(handler: Handler) -> Callable[[Console, Request], Awaitable[Response]]:
    """An API endpoint: 401 without a signed-in session; a POST also needs the CSRF header."""

    @functools.wraps(handler)
    async def guarded(self: Console, request: Request) -> Response:
        session = self.gate.session(request)
        if session is None or not session.signed_in:
            return JSONResponse({"error": "sign in first"}, status_code=401)
        if request.method == "POST" and not csrf_matches(session, request.headers.get(CSRF_HEADER)):
            return JSONResponse({"error": "missing or wrong CSRF token"}, status_code=403)
        try:
            if await self.ended(session):
                return JSONResponse({"error": "sign in first"}, status_code=401)
            return await handler(self, request, session)
        except UNREADABLE as exc:
            log.error("console: outbox unreadable: %s", exc)
            return JSONResponse({"error": f"the outbox cannot be read now: {exc}"}, status_code=503)

    return guarded


def action(handler: Callable[[Console, Request, Session, dict[str, str]], Awaitable[Response]]) -> Any:
    """A form POST that changes something: a signed-in session and the form's CSRF token, else nothing is done."""

    @functools.wraps(handler)
    async def guarded(self: Console, request: Request) -> Response:
        session = self.gate.session(request)
        if session is None or not session.signed_in:
            return RedirectResponse(f"{_base(request)}/sign-in", status_code=303)
        form = await _form(request)
        if form is None or not csrf_matches(session, form.get(CSRF_FIELD)):
            return PlainTextResponse("Forbidden: missing or wrong CSRF token", status_code=403)
        try:
            if await self.ended(session):
                return self._signed_out(request)
        except UNREADABLE as exc:
            log.error("console: outbox unreadable: %s", exc)
            return PlainTextResponse(f"The outbox cannot be read now: {exc}", status_code=503)
        return await handler(self, request, session, form)

    return guarded


class Console:
    """The ASGI app behind Mount("/console"). Built with the server's app; it finds the runtime (settings,
    outbox, committer) in each request's lifespan state."""

    def __init__(self) -> None:
        self.pages = Pages()
        self.playground = Playground()
        self._gate: Gate | None = None
        self._reads: queries.Reads | None = None
        self._warming: asyncio.Task[None] | None = None
        self._badge: tuple[float, int | None] = (-BADGE_SECONDS, None)  # (when read, dead letters)
        self._router = Router(
            routes=[
                Route("/", self.status, methods=["GET"]),
                Route("/api/status", self.status_panel, methods=["GET"]),
                Route("/sign-in", self.sign_in_form, methods=["GET"]),
                Route("/sign-in", self.sign_in, methods=["POST"]),
                Route("/sign-out", self.sign_out, methods=["POST"]),
                Route("/webhooks", self.webhooks, methods=["GET"]),
                # A plain segment, read by _int: Starlette's int convertor raised on 4,301 digits, before sign-in.
                Route("/webhooks/{webhook_id}", self.webhook, methods=["GET"]),
                Route("/dead-letters", self.dead_letters, methods=["GET"]),
                Route("/dead-letters/replay", self.replay, methods=["POST"]),
                Route("/dead-letters/discard", self.discard, methods=["POST"]),
                Route("/playground", self.playground_page, methods=["GET"]),
                Route("/playground/download", self.download, methods=["POST"]),
                Route("/api/playground", self.check, methods=["POST"]),
                Route("/api/samples", self.sample, methods=["GET"]),
                Mount("/static", StaticFiles(directory=STATIC), name="static"),
            ],
            redirect_slashes=False,  # its redirect names the request's own Host header (engine.server.app)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        runtime = scope.get("state", {}).get("runtime")
        token = runtime.settings.console_token if runtime is not None else None
        if scope["type"] != "http" or not token:
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)
            return
        if self._gate is None:
            self._gate = Gate(token)
            self._reads = queries.Reads(runtime.settings.db)

        async def secured(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += SECURITY_HEADERS
                if not scope["path"].startswith(f"{scope.get('root_path', '')}/static/"):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self._router(scope, receive, secured)

    async def entrance(self, request: Request) -> Response:
        """/console itself: to /console/ when the console is on; a 404 like any other path when it is off."""
        if request.state.runtime.settings.console_token:
            return RedirectResponse(f"{request.scope.get('root_path', '')}/console/", status_code=307)
        return PlainTextResponse("Not Found", status_code=404)

    async def close(self) -> None:
        await self.playground.close()
        if self._reads is not None:
            await asyncio.to_thread(self._reads.close)

    @property
    def gate(self) -> Gate:
        assert self._gate is not None
        return self._gate

    @property
    def reads(self) -> queries.Reads:
        assert self._reads is not None
        return self._reads

    # -- signing in ------------------------------------------------------------------------------------------

    async def sign_in_form(self, request: Request) -> Response:
        session = self.gate.session(request)
        if session is not None and session.signed_in:
            return RedirectResponse(f"{_base(request)}/", status_code=303)
        return self._sign_in_page(request, session)

    def _sign_in_page(
        self, request: Request, session: Session | None, wrong: bool = False, public: bool = False
    ) -> Response:
        """The form, with a CSRF token of a session not signed in (so that signing in is a checked POST too)."""
        session = session or self.gate.new_session(signed_in=False)
        response = self.pages.render(
            request, "sign_in.html", {"csrf": session.csrf, "wrong": wrong, "public": public},
            status_code=401 if wrong or public else 200,
        )  # fmt: skip
        self.gate.keep(response, request, session)
        return response

    async def sign_in(self, request: Request) -> Response:
        session = self.gate.session(request)
        form = await _form(request)
        if form is None or not csrf_matches(session, form.get(CSRF_FIELD)):
            return PlainTextResponse("Forbidden: missing or wrong CSRF token", status_code=403)
        if not self.gate.token_matches(form.get("token", "")):
            log.warning("console sign-in refused: wrong token", extra={"fields": {"client": _client(request)}})
            await asyncio.sleep(WRONG_TOKEN_DELAY)
            return self._sign_in_page(request, None, wrong=True)
        if form.get("token") == FIRST_RUN_CONSOLE_TOKEN and not _on_this_machine(request):
            # README's public token: `engine serve` refuses it beyond loopback, but `uvicorn server:app --host
            # 0.0.0.0` or a proxy in front would carry it further. It signs in from this machine only.
            log.warning(
                "console sign-in refused: the public first-run token", extra={"fields": {"client": _client(request)}}
            )
            return self._sign_in_page(request, None, public=True)
        log.info("console signed in", extra={"fields": {"client": _client(request)}})
        response = RedirectResponse(f"{_base(request)}/", status_code=303)
        self.gate.keep(response, request, self.gate.new_session(signed_in=True))  # a new CSRF token too
        return response

    @action
    async def sign_out(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """Ends this session (or, with `everywhere`, every session begun until now) in the outbox, so that a copy
        of the cookie stops working too, then forgets the cookie."""
        runtime = request.state.runtime
        everywhere = form.get("everywhere") == "1"
        key = ALL_SESSIONS if everywhere else session.key
        await runtime.committer.call(runtime.outbox.end_console_session, key, time.time())
        log.info("console signed out", extra={"fields": {"everywhere": everywhere, "client": _client(request)}})
        return self._signed_out(request)

    async def ended(self, session: Session) -> bool:
        return bool(await self.reads("console_session_ended", session.key, session.begun_at))

    def _signed_out(self, request: Request) -> Response:
        response = RedirectResponse(f"{_base(request)}/sign-in", status_code=303)
        self.gate.forget(response, request)
        return response

    # -- status ----------------------------------------------------------------------------------------------

    @page
    async def status(self, request: Request, session: Session) -> Response:
        return await self._render(request, session, "status.html", {"status": await self._status(request)})

    @api
    async def status_panel(self, request: Request, session: Session) -> Response:
        """The status page's panel alone, for its refresh every few seconds."""
        status = await self._status(request)
        return self.pages.render(request, "status_panel.html", {"status": status})

    async def _status(self, request: Request) -> queries.Status:
        # Where the sample webhook goes, as this browser reaches the server (a signed-in page: not echoed to anyone
        # else). Behind a proxy that rewrites paths it may differ; the README's Set-up says the same command.
        webhook_url = f"{request.url.scheme}://{request.url.netloc}{PATH}"
        status = await queries.status(request.state.runtime, self.reads, webhook_url)
        self._badge = (time.monotonic(), status.stats.dead_letters)
        return status

    # -- webhooks --------------------------------------------------------------------------------------------

    @page
    async def webhooks(self, request: Request, session: Session) -> Response:
        asked = {name: request.query_params.get(name, "").strip() for name in FILTERS}
        refused = queries.refused(request.state.runtime)
        context: dict[str, Any] = {"asked": asked, "outcomes": WEBHOOK_OUTCOMES, "refused": refused, "error": None}
        try:
            found, before = _webhook_filter(asked)
        except FilterError as exc:  # said on the page, with the form to correct it; nothing is read
            context |= {"webhooks": queries.Webhooks([], True, None), "before": None, "error": str(exc)}
            context |= {"narrowed": True, "query": ""}
            return await self._render(request, session, "webhooks.html", context, status_code=400)
        listed = await queries.recent_webhooks(self.reads, before, found)
        query = urlencode({name: value for name, value in asked.items() if value and name != "before"})
        context |= {"webhooks": listed, "before": before, "narrowed": found.narrows, "query": query}
        return await self._render(request, session, "webhooks.html", context)

    @page
    async def webhook(self, request: Request, session: Session) -> Response:
        # Not digits, or past any row id (2**63 would overflow SQLite's integer): no such webhook, as for any other.
        webhook_id = _int(request.path_params["webhook_id"])
        detail = await queries.webhook_detail(self.reads, webhook_id) if webhook_id is not None else None
        if detail is None:
            return await self._render(request, session, "missing.html", {"what": "webhook"}, status_code=404)
        return await self._render(request, session, "webhook.html", {"detail": detail})

    # -- dead letters ----------------------------------------------------------------------------------------

    @page
    async def dead_letters(self, request: Request, session: Session) -> Response:
        before = _int(request.query_params.get("before"))
        letters = await queries.dead_letters(self.reads, before)
        return await self._render(request, session, "dead_letters.html", {"letters": letters, "before": before})

    @action
    async def replay(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """What `engine outbox replay --dead [--id ID]` does: the mappings as they are on disk now (fixed, maybe,
        since the server started), the same function, on the server's writer."""
        runtime = request.state.runtime
        ids = _chosen(form)
        if ids == []:
            return self._after(request, session, "No dead letter was chosen.")
        try:
            mappings = await asyncio.to_thread(load_mappings, runtime.settings.mappings_dir)
        except (MappingError, MappingsFolderError) as exc:
            first = exc.findings[0] if isinstance(exc, MappingError) else exc
            return self._after(request, session, f"Nothing replayed: the mappings have problems ({first})")
        report = await runtime.committer.call(replay_dead_letters, runtime.outbox, mappings, ids)
        if report.messages:
            runtime.delivery.wake()
        log.info(
            "console replayed dead letters",
            extra={"fields": {"dead_letter_ids": report.replayed, "messages": report.messages}},
        )
        text = f"Replayed {len(report.replayed)} dead letter(s): {report.messages} message(s) queued again."
        for letter_id, reason in report.failed[:3]:
            text += f" Dead letter #{letter_id} still fails: {reason}."
        if ids and not report.replayed and not report.failed:
            text = f"No dead letter #{ids[0]} to replay (replayed or discarded already?)."
        return self._after(request, session, text)

    @action
    async def discard(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """What `engine outbox discard --id ID | --all` does."""
        runtime = request.state.runtime
        ids = _chosen(form)
        if ids == []:
            return self._after(request, session, "No dead letter was chosen.")
        discarded = await runtime.committer.call(runtime.outbox.discard_dead_letters, ids)
        log.info("console discarded dead letters", extra={"fields": {"dead_letter_ids": [d.id for d in discarded]}})
        text = f"Discarded {len(discarded)} dead letter(s)."
        if ids and not discarded:
            text = f"No dead letter #{ids[0]} to discard (replayed or discarded already?)."
        return self._after(request, session, text)

    def _after(self, request: Request, session: Session, flash: str) -> Response:
        self._badge = (-BADGE_SECONDS, None)  # the count changed: read it again
        response = RedirectResponse(f"{_base(request)}/dead-letters", status_code=303)
        self.gate.keep(response, request, replace(session, flash=flash[:1000]))
        return response

    # -- playground ------------------------------------------------------------------------------------------

    @page
    async def playground_page(self, request: Request, session: Session) -> Response:
        settings = request.state.runtime.settings
        files = [path.name for path in mapping_files(settings.mappings_dir)]
        file = request.query_params.get("file", "")
        if file not in files:
            file = "call.ended.yaml" if "call.ended.yaml" in files else (files[0] if files else "")
        text = (settings.mappings_dir / file).read_text(encoding="utf-8", errors="replace") if file else ""
        samples = self._fixtures(settings)
        recent = await self.reads("recent_webhooks", 20, None)
        event = file.removesuffix(".yaml").removesuffix(".yml")
        chosen = next((name for name in samples if Path(name).stem == event), None) or next(
            (name for name in samples if Path(name).stem.split("--")[0] == event), None
        )
        payload = _sample_text(samples[chosen]) if chosen else ""
        self._warming = asyncio.create_task(self.playground.warm())  # the first check need not start the child
        context = {
            "files": files,
            "file": file,
            "text": text,
            "samples": list(samples),
            "recent": recent,
            "chosen": f"fixture:{chosen}" if chosen else "",
            "payload": payload,
        }
        return await self._render(request, session, "playground.html", context)

    @api
    async def check(self, request: Request, session: Session) -> Response:
        body = await _body(request, MAX_API_BYTES)
        try:
            asked = json.loads(body) if body is not None else None
        except ValueError:
            asked = None
        if not isinstance(asked, dict) or not all(isinstance(asked.get(k), str) for k in ("file", "text", "payload")):
            return JSONResponse({"error": "expected JSON with file, text and payload"}, status_code=400)
        try:
            answer = await self.playground.check(
                request.state.runtime.settings, asked["file"], asked["text"], asked["payload"]
            )
        except PlaygroundRefused as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(answer)

    @api
    async def sample(self, request: Request, session: Session) -> Response:
        """A sample webhook's text for the playground: `fixture:NAME` (tests/fixtures) or `webhook:ID` (stored)."""
        kind, _, name = request.query_params.get("name", "").partition(":")
        if kind == "fixture":
            path = self._fixtures(request.state.runtime.settings).get(name)
            if path is not None:
                return JSONResponse({"payload": _sample_text(path)})
        elif kind == "webhook" and (webhook_id := _int(name)) is not None:
            found = await self.reads("webhook_body", webhook_id)
            if found is not None:
                return JSONResponse({"payload": queries.webhook_json(found[1])})
        return JSONResponse({"error": "no such sample"}, status_code=404)

    @action
    async def download(self, request: Request, session: Session, form: dict[str, str]) -> Response:
        """The edited file, back to the browser as a download: the playground never writes to the mappings."""
        name = form.get("file", "")
        if not FILE_NAME.fullmatch(name):  # a mapping's name, or none: a quote or a line end would end the header
            name = "mapping.yaml"
        return Response(
            form.get("text", ""),
            media_type="application/x-yaml; charset=utf-8",
            headers={"content-disposition": f'attachment; filename="{name}"'},
        )

    async def _dead_count(self, request: Request) -> int | None:
        """The navigation's dead-letter count: the outbox's counts cost what /healthz costs (tens of milliseconds
        with a million messages), so every page but the status reuses them for BADGE_SECONDS."""
        checked, count = self._badge
        if time.monotonic() - checked > BADGE_SECONDS:
            try:
                count = (await request.state.runtime.stats()).dead_letters
            except Exception:
                count = None
            self._badge = (time.monotonic(), count)
        return count

    @staticmethod
    def _fixtures(settings: Any) -> dict[str, Path]:
        folder = find_fixtures(settings.mappings_dir)
        return {path.name: path for path in sorted(folder.glob("*.json"))} if folder else {}

    # -- helpers ---------------------------------------------------------------------------------------------

    async def _render(
        self, request: Request, session: Session, name: str, context: dict[str, Any], status_code: int = 200
    ) -> Response:
        """A page with the layout's facts (the dead letters' count), and the flash left by an action, once."""
        context = {
            "csrf": session.csrf,
            "flash": session.flash,
            "dead_count": await self._dead_count(request),
            **context,
        }
        response = self.pages.render(request, name, context, status_code=status_code)
        if session.flash:
            self.gate.keep(response, request, replace(session, flash=None))
        return response


def _base(request: Request) -> str:
    return request.scope.get("root_path") or "/console"


def _on_this_machine(request: Request) -> bool:
    """The request came from this machine to a loopback address: no network, and no proxy that forwarded it
    (behind a trusted proxy uvicorn puts the original sender in `client`)."""
    server = request.scope.get("server") or (None,)
    return is_loopback(request.client.host if request.client else None) and is_loopback(server[0])


def _client(request: Request) -> str:
    return request.client.host if request.client else "-"


def _int(value: str | None) -> int | None:
    return int(value) if value is not None and ascii_digits(value) and len(value) < 19 else None


FILTERS = ("event", "outcome", "call", "since", "until", "before")  # the Webhooks page's query string


class FilterError(ValueError):
    """A filter of the Webhooks page that cannot be read: the message names it, its value and what it takes."""


def _webhook_filter(asked: dict[str, str]) -> tuple[WebhookFilter, int | None]:
    """The query string's filters (empty: any), and the page's `before`; FilterError for a value that is wrong."""
    event, outcome, call = asked["event"] or None, asked["outcome"] or None, asked["call"] or None
    prefix = event.removesuffix("*") if event is not None else ""
    # A prefix (call.*, call.end*) is a name's beginning: with a letter after it, it is a name.
    if event is not None and not is_event_name(prefix + ("x" if event.endswith(".*") else "")):
        raise FilterError(f"event: {event[:100]!r} is not an event name (like call.ended, or call.* for them all)")
    if outcome is not None and outcome not in WEBHOOK_OUTCOMES:
        raise FilterError(f"outcome: {outcome[:100]!r} is not one of {', '.join(WEBHOOK_OUTCOMES)}")
    call_id = _int(call) if call is not None else None
    if call is not None and call_id is None:
        raise FilterError(f"call: {call[:100]!r} is not a call id (digits)")
    since, until = _moment("since", asked["since"]), _moment("until", asked["until"])
    if since is not None and until is not None and until < since:
        raise FilterError(f"until: {asked['until']} is before since ({asked['since']})")
    before = _int(asked["before"]) if asked["before"] else None
    if asked["before"] and before is None:
        raise FilterError(f"before: {asked['before'][:100]!r} is not a webhook id")
    return WebhookFilter(event, outcome, call_id, since, until), before


def _moment(name: str, value: str) -> float | None:
    """A time of the filter, in UTC as the console shows times: a date, or a date and a time (what a browser's
    date-time field sends)."""
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value.removesuffix("Z").replace(" ", "T", 1))
    except ValueError:
        raise FilterError(f"{name}: {value[:100]!r} is not a UTC time like 2026-01-31 or 2026-01-31T14:05") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _chosen(form: dict[str, str]) -> list[int] | None:
    """The dead letter a button names, None for all of them ('all' set), [] for none (never 'all' by mistake)."""
    if form.get("all") == "yes":
        return None
    letter_id = _int(form.get("id"))
    return [letter_id] if letter_id is not None else []


def _sample_text(path: Path) -> str:
    """A sample webhook with its token blanked: the samples carry a real-looking token."""
    return queries.webhook_json(path.read_bytes())


async def _body(request: Request, limit: int) -> bytes | None:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _form(request: Request) -> dict[str, str] | None:
    """The urlencoded form, or None when it is something else or too large."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        return None
    body = await _body(request, MAX_FORM_BYTES)
    if body is None:
        return None
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
