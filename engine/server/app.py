"""The Starlette application: routes, and a lifespan that owns the runtime (mappings, outbox, delivery)."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from engine import __version__, logs
from engine.aircall.webhook import PATH, Gateway, gateway
from engine.config import ConfigError, load_settings
from engine.console.app import Console  # console: the web console, off unless ENGINE_CONSOLE_TOKEN is set
from engine.mapping.findings import MappingError
from engine.outbox import describe_db
from engine.server.health import readiness
from engine.server.runtime import Runtime, build_runtime, unknown_listed_events

log = logging.getLogger("engine.server")


async def healthz(request: Request) -> Response:
    runtime: Runtime = request.state.runtime
    try:
        stats = await runtime.stats()
    except Exception as exc:
        return JSONResponse({"status": "error", "reason": f"outbox unreadable: {exc}"}, status_code=503)
    delivery = runtime.delivery.state
    body = {
        "status": "ok",
        "version": __version__,
        "segment_configured": runtime.delivery.client is not None,
        "aircall_api_configured": bool(runtime.settings.aircall_api_id and runtime.settings.aircall_api_token),
        "outbox": stats.as_dict(),
        "delivery": {
            "last_error": delivery.last_error,
            "last_error_at": delivery.last_error_at,
            "last_success_at": delivery.last_success_at,
            "paused_until": delivery.paused_until or None,
        },
        "processing": {"running": runtime.processor.alive, "restarts": runtime.processor.restarts},
        "mappings": len(runtime.mappings),
        "events_enabled": runtime.settings.events.describe(),
        # With API credentials: whether Aircall still sends (it disables a webhook whose deliveries keep failing).
        "aircall_webhook": watched.as_dict() if (watched := runtime.aircall_webhook()) else None,
    }
    if watched is not None and watched.problem:
        body["warning"] = watched.problem
    elif runtime.delivery.client is None:
        body["warning"] = "SEGMENT_WRITE_KEY is not set: messages are kept in the outbox, not sent"
    elif stats.waiting_for_api and not body["aircall_api_configured"]:
        body["warning"] = (
            f"{stats.waiting_for_api} webhook(s) wait: their mapping reads Aircall's REST API, and "
            "AIRCALL_API_ID and AIRCALL_API_TOKEN are not set"
        )
    return JSONResponse(body)


async def readyz(request: Request) -> Response:
    """Readiness: 200 {"status":"ready"}, or 503 {"status":"degraded","reasons":[...]} (engine.server.health)."""
    health = await readiness(request.state.runtime)
    return JSONResponse(health.as_dict(), status_code=200 if health.ready else 503)


async def metrics(request: Request) -> Response:
    runtime: Runtime = request.state.runtime
    try:
        await runtime.stats()  # refreshes the outbox gauges
    except Exception:
        log.exception("outbox unreadable for /metrics")
    return Response(runtime.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


class _WebhooksFirst:
    """POST /webhooks/aircall goes straight to the gateway, a plain ASGI endpoint: it is the path every webhook
    takes, and Starlette's router, middleware and request objects would double its cost. Everything else,
    including that path with another method or a trailing slash, is Starlette's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST":
            await gateway(scope, receive, send)
        else:
            await self.app(scope, receive, send)


class _Endpoint:
    """An ASGI function as a Starlette route's endpoint (Starlette takes a plain function for a request handler)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class _QuietStartupFailure:
    """A setting or a mapping the operator got wrong stops start-up with the one-line error the lifespan logs.

    Starlette hands uvicorn the traceback of a failed start-up, and uvicorn prints it: for these errors,
    uvicorn is told of the failure without it. Any other exception keeps its traceback (a bug to report).
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        held: list[Message] = []

        async def hold_failure(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)
            else:
                await send(message)

        try:
            await self.app(scope, receive, hold_failure)
        except (ConfigError, MappingError):
            await send({"type": "lifespan.startup.failed", "message": ""})
        except BaseException:
            for message in held:
                await send(message)
            raise


def create_app(env_file: str | None = None) -> ASGIApp:
    """The app; settings are read when it starts, from the environment then `env_file` (else ENGINE_ENV_FILE,
    which must then exist, else .env if there is one)."""
    named = env_file or os.environ.get("ENGINE_ENV_FILE")
    console = Console()  # console

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Runtime | Gateway]]:
        try:
            settings = load_settings(named or ".env", required=named is not None)
            logs.configure(settings.log_format, settings.log_level)
            runtime = build_runtime(settings)
        except (ConfigError, MappingError) as exc:
            logs.configure()
            log.error("cannot start: %s", exc)
            raise
        await runtime.start()
        started = {"version": __version__, "mappings": len(runtime.mappings), "events": settings.events.describe()}
        started |= {"outbox": describe_db(settings.db), "segment_configured": bool(settings.segment_write_key)}
        if settings.segment_write_key:
            started["segment_api_url"] = settings.segment_api_url
        log.info("started", extra={"fields": started})
        for event in unknown_listed_events(settings, runtime.mappings):
            log.warning(
                "AIRCALL_EVENTS names %s, which is neither an Aircall event of the catalogue nor mapped: a typo? "
                "Its webhooks will be held unmapped until mappings/%s.yaml exists", event, event,
                extra={"fields": {"event": event}},
            )  # fmt: skip
        if not settings.webhook_tokens:
            log.warning("AIRCALL_WEBHOOK_TOKEN is not set: every webhook is refused with 401")
        if settings.console_token:  # the first run's next step: where to look (the token is never logged)
            log.info("web console at /console/ on this server: sign in with ENGINE_CONSOLE_TOKEN")
        try:
            # The webhook route is handed its Gateway; the other routes (health, metrics, console) the runtime.
            yield {"runtime": runtime, "gateway": runtime.gateway()}
        finally:
            await console.close()  # console
            await runtime.stop()
            log.info("stopped")
            logs.write_directly()

    app = Starlette(
        middleware=[Middleware(_QuietStartupFailure)],
        routes=[
            Route(PATH, _Endpoint(gateway), methods=["POST"]),
            Route(PATH + "/", _Endpoint(gateway), methods=["POST"]),  # a webhook URL pasted with a slash
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/console", console.entrance),  # console: /console/ when it is on, else 404
            Mount("/console", app=console),  # console
        ],
        lifespan=lifespan,
    )
    # Starlette answers a path that matches with a slash added or removed by a redirect to the request's own
    # Host header, before any token is checked: nothing of an unauthenticated request is echoed, so 404.
    app.router.redirect_slashes = False
    return _WebhooksFirst(app)
