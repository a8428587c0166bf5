"""What `engine backfill` tells a person while it runs: the plan and its duration at the start, then a live line
per resource on a terminal (rewritten in place with \\r), or plain lines now and then when the output is a log
file or CI (no control characters there)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TextIO

from engine.aircall.api import AircallClient
from engine.aircall.backfill import Walk


def plural(count: int, noun: str) -> str:
    """'1 request', '2 requests', '1,000 requests'."""
    return f"{count:,} {noun}" if count == 1 else f"{count:,} {noun}s"


def duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s" if minutes < 10 else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def _day(moment: int) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M").removesuffix(" 00:00")


class BackfillDisplay:
    """The backfill's progress on `stream` (standard error): live on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO, client: AircallClient, live: bool | None = None, every: float = 30.0) -> None:
        self.stream = stream
        self.client = client
        self.live = stream.isatty() if live is None else live
        self.every = every  # seconds between two plain lines
        self._last_line = time.monotonic()  # plain lines: the first after `every` seconds
        self._drawn = False  # a live line is on screen, without its newline
        self._began = time.monotonic()
        self._walk: Walk | None = None
        self._waits_at_start = (0, 0.0)

    # -- events ----------------------------------------------------------------------------------------------

    def plan(self, walks: Sequence[Walk]) -> None:
        parts = []
        for walk in walks:
            name, count = walk.resource.name, walk.cursor.fetched + walk.objects_left()
            scope = ""
            if not walk.resource.whole_set:
                scope = f" ({_day(walk.since)} to {_day(walk.until)})"
            elif walk.since:
                scope = f" (since {_day(walk.since)})"
            resumed = ", continuing an interrupted run" if walk.resumed and not walk.done else ""
            parts.append(f"{name} {'~' if not walk.probed else ''}{count:,}{scope}{resumed}")
        requests = sum(w.requests_left() for w in walks)
        made = sum(w.progress.requests for w in walks)
        client = self.client
        limit = client.limit or 60
        pace = (
            f"at {client.rate} requests a minute, leaving {limit - client.rate} of Aircall's {limit} a minute to the "
            "account's other integrations"
            if client.rate and client.rate < limit
            else f"at Aircall's limit of {limit} requests a minute, which leaves nothing to the account's other "
            "integrations meanwhile"
        )
        self._say(f"backfill: {', '.join(parts)}")
        self._say(f"about {made + requests:,} requests, {made} made: {self._eta(requests)} {pace}")

    def start(self, walk: Walk) -> None:
        self._walk = walk
        self._waits_at_start = (self.client.log.waits, self.client.log.seconds)
        if self.live:
            self.update(walk, force=True)

    def update(self, walk: Walk, force: bool = False) -> None:
        moment = time.monotonic()
        if self.live:
            if force or moment - self._last_line >= 0.2:
                self._last_line = moment
                self._draw(self.line(walk))
        elif force or moment - self._last_line >= self.every:
            self._last_line = moment
            self._say(self.line(walk))

    def waiting(self, seconds: float) -> None:
        """The client is about to wait: a live line says so for the while; in a log, a line of its own (a
        backfill may wait minutes in all, and a log that says nothing looks like a hang)."""
        if self.live and self._walk is not None:
            self._draw(f"{self.line(self._walk)}; waiting {duration(seconds)} for the rate limit")
        elif not self.live:
            self._say(f"waiting {duration(seconds)} for Aircall's rate limit")

    def finish(self, walk: Walk) -> None:
        self._say(self.line(walk, final=True))
        self._walk = None

    def note(self, text: str) -> None:
        self._say(text)
        if self.live and self._walk is not None:
            self._draw(self.line(self._walk))

    def interrupted(self) -> None:
        self._say("backfill interrupted: what was listed is queued; the same command continues at the next page")

    # -- text ------------------------------------------------------------------------------------------------

    def line(self, walk: Walk, final: bool = False) -> str:
        cursor, progress, log = walk.cursor, walk.progress, self.client.log
        waits, waited = log.waits - self._waits_at_start[0], log.seconds - self._waits_at_start[1]
        outcome = (
            f"rate-limit waits {waits} ({duration(waited)}); {progress.queued:,} queued, {progress.already:,} "
            f"already queued, {progress.skipped:,} skipped, {progress.dead_lettered:,} dead-lettered"
        )
        if final:
            requests = plural(cursor.requests, "request")
            return f"{walk.resource.name}: done: {cursor.fetched:,} listed; {requests}; {outcome}"
        objects = f"{cursor.fetched:,} of {cursor.fetched + walk.objects_left():,}"
        requests = f"{cursor.requests:,} of {cursor.requests + walk.requests_left():,}"
        eta = self._eta(walk.requests_left())
        return f"{walk.resource.name}: {objects} listed; {requests} requests; {eta} left; {outcome}"

    def _eta(self, requests: int) -> str:
        log = self.client.log
        worked = max(time.monotonic() - self._began - log.seconds, 0.0)
        per_request = worked / log.requests if log.requests else 0.0
        seconds = max(self.client.seconds_for(requests), requests * per_request)
        return "under a minute" if seconds < 60 else f"about {duration(seconds)}"

    def _draw(self, text: str) -> None:
        width = shutil.get_terminal_size((120, 24)).columns
        if len(text) >= width:
            text = text[: max(width - 2, 10)] + "…"
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()
        self._drawn = True

    def _say(self, text: str) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()
