"""`engine backfill`: history from Aircall's REST API, through the same selection, mappings and outbox as the
webhooks, so it lands in Segment exactly as the live events do.

Each object becomes the event that would have announced it: a call is `call.ended`, a user `user.created.v2`, a
contact `contact.created`, a number `number.created`, stamped with the object's own time. The messageIds follow
from event, object and time, so running a backfill again queues nothing twice.

What it costs follows the data, not the calendar. Each resource is listed over its whole range at once, 50 a
page, oldest first. Aircall pages no further than 10,000 objects a query, so when the first page's
`meta.total` says a range holds more, the range is split into as many equal spans of time as that total needs
and each is listed in turn; a span that still holds too many is split again. Requests: about objects / 50,
plus one per split. The walk is saved after every page (`Cursor`, in the outbox), so an interrupted run
continues at the next page.

The calls are those started in [since, until). Users, numbers and contacts are the whole current set by
default (a call refers to its agent and its line, whenever they were created); contacts can be bounded too.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from engine.aircall.api import AircallClient, AircallError
from engine.aircall.envelope import Webhook
from engine.aircall.selection import Selection
from engine.config import EventChoice
from engine.mapping.load import Mappings
from engine.outbox import Outbox, stored_webhook
from engine.processing.fetch import Fetcher
from engine.processing.mapper import process
from engine.values import parse_iso

PER_PAGE = 50  # Aircall's largest page
CEILING = 10_000  # Aircall lists no further than this many objects for one query, however it is paged
SPLIT_TARGET = 8_000  # objects a split aims at per span: room for the data not being spread evenly


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
    range_field: str  # what the API's from/to filter on, and orders by: the object's creation
    filtered: bool  # whether the list endpoint takes from/to (Aircall's numbers list does not)
    whole_set: bool  # by default every object there is, not only those created since --since

    def time_of(self, obj: dict[str, Any]) -> int | None:
        for name in self.time_fields:
            moment = _unix(obj.get(name))
            if moment is not None:
                return moment
        return None

    def created(self, obj: dict[str, Any]) -> int | None:
        return _unix(obj.get(self.range_field))


RESOURCES: dict[str, Resource] = {
    r.name: r
    for r in (
        Resource("calls", "call", "call.ended", ("ended_at", "started_at"), "started_at", True, False),
        # V2, the user events Aircall asks integrations to use (see users_as for a team that kept V1).
        Resource("users", "user", "user.created.v2", ("created_at",), "created_at", True, True),
        Resource("contacts", "contact", "contact.created", ("created_at",), "created_at", True, True),
        Resource("numbers", "number", "number.created", ("created_at",), "created_at", False, True),
    )
}


def users_as(events: Container[str], mapped: Container[str] = ()) -> Resource:
    """Users become `user.created.v2`, unless that is left out of AIRCALL_EVENTS or not mapped, and the V1
    `user.created` is both: a team that stayed on V1 (its settings, or mappings of its own from before the V2
    events) gets its history as V1. Both land as the Segment event user.created, with the same messageIds."""
    users = RESOURCES["users"]
    if (
        (users.event not in events or users.event not in mapped)
        and "user.created" in events
        and ("user.created" in mapped)
    ):
        return replace(users, event="user.created")
    return users


def parse_date(text: str, name: str) -> int:
    """`2025-01-31` (midnight UTC) or an ISO 8601 date and time; unix seconds."""
    moment = parse_iso(text)
    if moment is None:
        raise ValueError(f"{name}: {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time")
    return int(moment.timestamp())


def now() -> int:
    return int(time.time())


# -- from Aircall objects to the outbox ----------------------------------------------------------------------


@dataclass
class Counts:
    """Objects, each counted once, by what became of them; and the messages that are new in the outbox."""

    queued: int = 0  # objects whose messages are in the outbox now, and were not before
    already: int = 0  # objects whose messages were all in the outbox already (an earlier run, a live webhook)
    skipped: int = 0  # objects whose event is disabled or whose number is inactive
    dead_lettered: int = 0
    messages: int = 0  # messages committed to the outbox for the first time


def queue_webhooks(
    outbox: Outbox,
    mappings: Mappings,
    selection: Selection,
    webhooks: Sequence[Webhook],
    fetcher: Fetcher | None = None,
) -> Counts:
    """Select, map and commit in one batch: the processing stage's function, as for a live webhook."""
    counts, batch = Counts(), []
    for webhook in webhooks:
        if mappings.get(webhook.event) is None or selection.skip_reason(webhook) is not None:
            counts.skipped += 1
            continue
        result = process(webhook, stored_webhook(webhook), mappings, fetcher=fetcher)
        if result.waiting_until is not None:  # a mapping that reads the API, which did not answer: not queued
            counts.skipped += 1
            continue
        batch.append(result)
    if batch:
        for result, new in zip(batch, outbox.commit_processed(batch), strict=True):
            counts.messages += new
            if result.dead_reason is not None:
                counts.dead_lettered += 1
            elif new or not result.messages:
                counts.queued += 1
            else:
                counts.already += 1
    return counts


def backfill_webhook(resource: Resource, obj: dict[str, Any], moment: int) -> Webhook:
    # Identified by event, object and time alone: a second run queues nothing again, even though the calls have
    # gained tags or comments since.
    return Webhook(resource.resource, resource.event, moment, "", obj, identified_by_content=False)


# -- the walk ------------------------------------------------------------------------------------------------


@dataclass
class Window:
    """A span of creation times, [start, end), listed as one query."""

    start: int
    end: int
    expected: int | None = None  # objects, as estimated when a larger span was split; None: not known


@dataclass
class Cursor:
    """Where a resource's backfill stands, saved after every page."""

    windows: list[Window]  # still to list, oldest first; the first is being paged
    page: int = 0  # pages of windows[0] done
    total: int | None = None  # windows[0]'s meta.total, from its first page
    last_time: int | None = None  # creation time of the newest object done in windows[0]
    unfiltered: bool = False  # Aircall was found ignoring from/to for this resource
    expected: int | None = None  # the whole range's meta.total, from its first page (for progress and the plan)
    fetched: int = 0  # objects listed, over every run of this range
    queued: int = 0  # messages queued, over every run
    requests: int = 0  # over every run

    def dumps(self) -> str:
        return json.dumps(asdict(self) | {"windows": [[w.start, w.end, w.expected] for w in self.windows]})

    @classmethod
    def loads(cls, text: str) -> Cursor:
        data = json.loads(text)
        data["windows"] = [Window(*w) for w in data["windows"]]
        return cls(**data)


@dataclass
class Progress:
    """This run's figures for one resource."""

    resource: str
    fetched: int = 0
    queued: int = 0  # objects, as Counts counts them
    already: int = 0
    skipped: int = 0  # not selected (event disabled, number inactive)
    outside: int = 0  # listed but created outside the range: an API that ignored from/to
    dead_lettered: int = 0
    messages: int = 0
    requests: int = 0
    unreachable: int = 0  # past Aircall's ceiling in one second of time, or of a listing that ignores from/to


@dataclass
class Walk:
    """One resource's backfill over one range, a request a step, resumable at the page."""

    client: AircallClient
    outbox: Outbox
    resource: Resource
    since: int
    until: int
    queue: Callable[[Sequence[Webhook]], Counts]
    note: Callable[[str], None] = lambda text: None  # things a person should know: a split, an odd API
    progress: Progress = field(init=False)
    cursor: Cursor = field(init=False)
    resumed: bool = field(init=False)

    def __post_init__(self) -> None:
        self.progress = Progress(self.resource.name)
        done_until, state = self.outbox.backfill_start(self.resource.name, self.since, self.until)
        if state is not None:
            self.cursor = Cursor.loads(state)
        else:  # a fresh start, or a run of an engine that saved no state: it had finished what is before done_until
            self.cursor = Cursor([Window(done_until, self.until)] if done_until < self.until else [])
        self.resumed = done_until > self.since or state is not None
        if self.done:
            self.outbox.backfill_finished(self.resource.name, self.since, self.until)

    @property
    def done(self) -> bool:
        return not self.cursor.windows

    @property
    def probed(self) -> bool:
        """Whether something is known of what is left (a total, or estimates from a split)."""
        cursor = self.cursor
        return not cursor.windows or cursor.total is not None or cursor.windows[0].expected is not None

    def objects_left(self) -> int:
        cursor = self.cursor
        if not cursor.windows:
            return 0
        here = self._left_here()
        later = sum(w.expected or 0 for w in cursor.windows[1:])
        if cursor.expected is not None:  # the whole range's total, from its first page: better than split estimates
            later = max(cursor.expected - cursor.fetched - here, 0)
        return here + later

    def requests_left(self) -> int:
        cursor = self.cursor
        if not cursor.windows:
            return 0
        if cursor.total is not None:  # windows[0] is being paged: its pages are known
            here, others = max(0, _pages(cursor.total) - cursor.page), cursor.windows[1:]
            objects = self.objects_left() - self._left_here()
        else:
            here, others, objects = 0, cursor.windows, self.objects_left()
        splits = sum(1 for w in others if w.expected is not None and w.expected >= CEILING)
        # Each window's pages, rounded up: about one more request per window than the objects alone need.
        return here + math.ceil(objects / PER_PAGE) + len(others) + splits

    def _left_here(self) -> int:
        cursor = self.cursor
        if cursor.total is not None:
            return max(0, min(cursor.total, CEILING) - cursor.page * PER_PAGE)
        return cursor.windows[0].expected or 0

    def step(self) -> None:
        """List the next page, queue what it holds, save where the walk stands."""
        cursor, resource = self.cursor, self.resource
        window, page = cursor.windows[0], cursor.page + 1
        filtered = resource.filtered and not cursor.unfiltered
        params: dict[str, Any] = {"per_page": PER_PAGE, "order": "asc", "page": page}
        if filtered:
            if window.start > 0:
                params["from"] = window.start
            params["to"] = window.end - 1  # Aircall's `to` is included
        objects, meta = self.client.list_page(resource.name, resource.name, params)
        cursor.requests += 1
        self.progress.requests += 1
        total = _count(meta.get("total"))
        created = [resource.created(obj) for obj in objects]

        if cursor.expected is None and page == 1 and len(cursor.windows) == 1:
            cursor.expected = total
        if filtered and any(t is not None and not window.start <= t < window.end for t in created):
            # The query's from/to were not applied: every window is the same listing. List it once, keep the range.
            cursor.unfiltered, filtered, cursor.expected = True, False, None
            self.note(f"{resource.name}: Aircall ignored from/to; listing every one and keeping those of the range")
            window = cursor.windows[0] = Window(window.start, cursor.windows[-1].end)
            del cursor.windows[1:]
        elif filtered and page == 1 and total is not None and total >= CEILING:
            parts = _split(window, total, created)
            if parts:
                cursor.windows[0:1] = parts
                self.note(
                    f"{resource.name}: {total:,} in one listing, past Aircall's {CEILING:,}: in {len(parts)} parts"
                )
                self._save()
                return

        shifted = filtered and page > 1 and total is not None and cursor.total is not None and total != cursor.total
        resume_from = cursor.last_time if cursor.last_time is not None else window.start
        self._queue(objects, created, window)
        cursor.page, cursor.total = page, total if total is not None else cursor.total

        per_page = _count(meta.get("per_page")) or PER_PAGE
        more = bool(objects) and (bool(meta.get("next_page_link")) or (total is not None and page * per_page < total))
        if cursor.unfiltered and created and all(t is not None and t >= window.end for t in created):
            more = False  # oldest first, and already past the range
        if shifted:
            # Objects were deleted (or created) in this window since its first page: the pages moved. List again
            # from the last object done; what is listed twice is not queued twice.
            cursor.windows[0] = Window(resume_from, window.end, window.expected)
            self._next_page_from_start()
        elif more and page * per_page >= CEILING:
            self._past_the_ceiling(window, total)
        elif not more:
            cursor.windows.pop(0)
            self._next_page_from_start()
        self._save()

    def _queue(self, objects: list[dict[str, Any]], created: list[int | None], window: Window) -> None:
        webhooks, progress, resource = [], self.progress, self.resource
        for obj, made in zip(objects, created, strict=True):
            moment = resource.time_of(obj)
            if made is None or moment is None or not window.start <= made < window.end:
                progress.outside += 1  # not of this range (an API that ignores from/to): not ours to send
                continue
            webhooks.append(backfill_webhook(resource, obj, moment))
            self.cursor.last_time = max(made, self.cursor.last_time or made)
        counts = self.queue(webhooks)
        progress.fetched += len(objects)
        progress.queued += counts.queued
        progress.already += counts.already
        progress.skipped += counts.skipped
        progress.dead_lettered += counts.dead_lettered
        progress.messages += counts.messages
        self.cursor.fetched += len(objects)
        self.cursor.queued += counts.messages

    def _past_the_ceiling(self, window: Window, total: int | None) -> None:
        """The window holds more than Aircall will page through although it was not split (its total was wrong,
        missing, or it is one second): continue after the newest object done, as a new listing."""
        cursor, name = self.cursor, self.resource.name
        last = cursor.last_time
        if cursor.unfiltered or last is None:
            left = (total or 0) - CEILING
            self.progress.unreachable += max(left, 0)
            self.note(f"{name}: Aircall lists no more than {CEILING:,}; {left:,} more cannot be reached this way")
            cursor.windows.pop(0)
        elif last > window.start:
            cursor.windows[0] = Window(last, window.end)
        else:  # 10,000 objects created in one second: the rest of that second cannot be listed
            self.progress.unreachable += max((total or 0) - CEILING, 0)
            self.note(f"{name}: more than {CEILING:,} created at {last}; those past the first {CEILING:,} are skipped")
            if window.start + 1 < window.end:
                cursor.windows[0] = Window(window.start + 1, window.end)
            else:
                cursor.windows.pop(0)
        self._next_page_from_start()

    def _next_page_from_start(self) -> None:
        self.cursor.page, self.cursor.total, self.cursor.last_time = 0, None, None

    def _save(self) -> None:
        cursor = self.cursor
        done_until = cursor.windows[0].start if cursor.windows else self.until
        name = self.resource.name
        self.outbox.backfill_save(
            name, self.since, self.until, cursor.dumps(), done_until, cursor.fetched, cursor.queued
        )
        if not cursor.windows:
            self.outbox.backfill_finished(name, self.since, self.until)


# More objects than any account has: Aircall's busiest accounts make millions of calls, not billions. A total
# past it is an answer not to plan on (90 million windows, 6 GB, once measured), refused in one line.
MAX_TOTAL = 1_000_000_000


def _count(value: Any) -> int | None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        return None
    if value > MAX_TOTAL:
        raise AircallError(f"Aircall API says {value:,} objects match one listing, more than any account has")
    return value


def _pages(objects: int) -> int:
    """Requests to list that many objects in one window (at least one, to learn that it is empty)."""
    return max(1, math.ceil(min(objects, CEILING) / PER_PAGE))


def _split(window: Window, total: int, created: list[int | None]) -> list[Window] | None:
    """Equal spans of time, as many as the total needs; None when the window is one second and cannot split."""
    start = window.start
    known = [t for t in created if t is not None]
    if known and known == sorted(known) and window.start <= known[0] < window.end:
        start = known[0]  # oldest first: nothing in the window is older than its first object
    span = window.end - start
    parts = min(max(2, math.ceil(total / SPLIT_TARGET)), span)
    if parts < 2:
        return None
    bounds = [start + span * i // parts for i in range(parts + 1)]
    return [Window(a, b, total // parts) for a, b in itertools.pairwise(bounds)]


class Display(Protocol):
    """Whoever tells a person how the backfill goes (engine.aircall.progress)."""

    def plan(self, walks: Sequence[Walk]) -> None: ...
    def start(self, walk: Walk) -> None: ...
    def update(self, walk: Walk) -> None: ...
    def finish(self, walk: Walk) -> None: ...


def run_walks(walks: Sequence[Walk], display: Display) -> None:
    """Every walk to its end: first a page of each, so that the plan knows how many there are, then each in turn."""
    for walk in walks:
        if not walk.probed:
            walk.step()
    display.plan(walks)
    for walk in walks:
        display.start(walk)
        while not walk.done:
            walk.step()
            display.update(walk)
        display.finish(walk)


# -- what a run covers ---------------------------------------------------------------------------------------


def plan(
    outbox: Outbox,
    names: Sequence[str],
    since: int,
    until: int | None,
    contacts_since: int | None = None,
    at: int | None = None,
    events: Container[str] = EventChoice(),
    mapped: Container[str] = ("user.created.v2",),
) -> list[tuple[Resource, int, int]]:
    """Each resource with the range it covers: calls from `since` to `until`; users, numbers and contacts every
    one created before now (contacts from `contacts_since` when given). Without an `until`, a run continues the
    unfinished run of the same start, if there is one, rather than beginning another up to a later now."""
    moment = now() if at is None else at
    ranges = []
    for name in names:
        resource = users_as(events, mapped) if name == "users" else RESOURCES[name]
        start = since
        if resource.whole_set:
            start = contacts_since if name == "contacts" and contacts_since is not None else 0
        end = until if until is not None and not resource.whole_set else None
        if end is None:
            end = outbox.backfill_unfinished_until(name, start) or moment
        ranges.append((resource, start, end))
    return ranges
