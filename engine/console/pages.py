"""Server-rendered pages: Jinja with autoescape on, an Environment of the console's own.

It shares nothing with the mappings' sandbox (engine.mapping.templating): these templates are ours, and everything
they show from the outbox (a contact's name, a Segment error, a payload) is data, escaped on output.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from starlette.requests import Request
from starlette.responses import HTMLResponse

from engine import __version__

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"


def clock(timestamp: float | None) -> str:
    """Unix seconds as UTC, to the second."""
    if timestamp is None:
        return "—"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return "under a second"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def ago(timestamp: float | None, now: float | None = None) -> str:
    if timestamp is None:
        return "never"
    return f"{duration((now or time.time()) - timestamp)} ago"


def number(value: int | float | None) -> str:
    return "—" if value is None else f"{value:,}"


def code_spans(text: str) -> Markup:
    """Our own sentences with `commands` in backticks, escaped, each command as <code>."""
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an odd backtick: not ours to interpret
        return escape(text)
    return Markup("").join(
        escape(part) if i % 2 == 0 else Markup("<code>%s</code>") % part for i, part in enumerate(parts)
    )


class Pages:
    def __init__(self) -> None:
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=True,  # every page: data from webhooks is only ever text
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(clock=clock, duration=duration, ago=ago, number=number, code_spans=code_spans)

    def render(self, request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
        base = request.scope.get("root_path") or "/console"
        html = self.env.get_template(name).render(
            {
                "base": base,
                "static": f"{base}/static",
                "version": __version__,
                "now": time.time(),
                "flash": None,
                "dead_count": None,
                **context,
            }
        )
        return HTMLResponse(html, status_code=status_code)
