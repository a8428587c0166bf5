"""`engine backfill`: history from Aircall's REST API, through the same selection, mappings and outbox as the
webhooks, so it lands in Segment exactly as the live events do.

Each object becomes the event that would have announced its final state: a call is `call.ended`, a user
`user.created`, a contact `contact.created`, a number `number.created`, stamped with the object's own time.
The messageIds follow from event, object and time, so running a backfill again queues nothing twice. The time
range is walked in windows; a finished window is recorded in the outbox, and an interrupted run picks up at
the first window it had not finished.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engine.aircall_api import AircallClient
from engine.envelope import Webhook
from engine.mapping import Mappings
from engine.outbox import Outbox, Processed, stored_webhook
from engine.processing import process
from engine.selection import Selection
from engine.templating import parse_iso


def _unix(value: Any) -> int | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str):
        moment = parse_iso(value)
        return None if moment is None else int(moment.timestamp())
    return None


@dataclass(frozen=True)
class Resource:
    name: str  # as on the command line and in the API path: calls, users, contacts, numbers
    resource: str  # as in a webhook: call, user, contact, number
    event: str
    time_fields: tuple[str, ...]  # the event's time: the first of these the object has
    range_field: str  # what the API's from/to filter on: the object's creation

    def time_of(self, obj: dict[str, Any]) -> int | None:
        for name in self.time_fields:
            moment = _unix(obj.get(name))
            if moment is not None:
                return moment
        return None


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("calls", "call", "call.ended", ("ended_at", "started_at"), "started_at"),
        Resource("users", "user", "user.created", ("created_at",), "created_at"),
        Resource("contacts", "contact", "contact.created", ("created_at",), "created_at"),
        Resource("numbers", "number", "number.created", ("created_at",), "created_at"),
    )
}

WINDOW_SECONDS = 86_400  # one day of history per walk through the pages: well under Aircall's page limits


@dataclass
class Progress:
    resource: str
    fetched: int = 0
    queued: int = 0
    skipped: int = 0  # not selected (event disabled, number inactive) or outside the range
    dead_lettered: int = 0
    windows_done: int = 0
    windows_total: int = 0


def parse_date(text: str, name: str) -> int:
    """`2025-01-31` (midnight UTC) or an ISO 8601 date and time; unix seconds."""
    moment = parse_iso(text)
    if moment is None:
        raise ValueError(f"{name}: {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time")
    return int(moment.timestamp())


def backfill(
    client: AircallClient,
    outbox: Outbox,
    mappings: Mappings,
    selection: Selection,
    resource: Resource,
    since: int,
    until: int,
    report: Callable[[Progress], None] = lambda progress: None,
) -> Progress:
    """Walk [since, until) for one resource; resume where an earlier run of the same range stopped."""
    progress = Progress(resource.name)
    start = outbox.backfill_resume_point(resource.name, since, until)
    windows = list(range(since, until, WINDOW_SECONDS))
    progress.windows_total = len(windows)
    progress.windows_done = sum(1 for w in windows if w + WINDOW_SECONDS <= start)
    mapping = mappings.get(resource.event)
    for window_start in windows:
        if window_start + WINDOW_SECONDS <= start:
            continue
        window_end = min(window_start + WINDOW_SECONDS, until)
        fetched_before, queued_before = progress.fetched, progress.queued
        params = {"from": window_start, "to": window_end - 1, "per_page": 50, "order": "asc"}
        for objects, _meta in client.pages(resource.name, resource.name, params):
            batch: list[Processed] = []
            for obj in objects:
                progress.fetched += 1
                created, moment = _unix(obj.get(resource.range_field)), resource.time_of(obj)
                if created is None or moment is None or not window_start <= created < window_end:
                    progress.skipped += 1  # outside the range (an API that ignores from/to): not ours to send
                    continue
                # Ids from event, object and time alone: a second run over the same range queues nothing again,
                # even though the calls have gained tags or comments since.
                webhook = Webhook(resource.resource, resource.event, moment, "", obj, identified_by_content=False)
                if mapping is None or selection.skip_reason(webhook) is not None:
                    progress.skipped += 1
                    continue
                result = process(webhook, stored_webhook(webhook), mappings)
                if result.dead_reason is not None:
                    progress.dead_lettered += 1
                batch.append(result)
            if batch:
                progress.queued += sum(outbox.commit_processed(batch))
            report(progress)
        outbox.backfill_window_done(
            resource.name, since, until, window_end,
            progress.fetched - fetched_before, progress.queued - queued_before,
        )  # fmt: skip
        progress.windows_done += 1
        report(progress)
    outbox.backfill_finished(resource.name, since, until)
    return progress


def now() -> int:
    return int(time.time())
