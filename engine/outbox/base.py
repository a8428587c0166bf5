"""The outbox's contract: the records every store takes and gives, the `Outbox` protocol that delivery,
processing, the gateway and the CLI use, and what a store raises. The stores (engine.outbox.sqlite,
engine.outbox.postgres) import this module and nothing of the mapping or the webhook's schema."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
import urllib.parse
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from engine.aircall.envelope import Webhook

DEAD_LETTER_COLUMNS = "id, message_id, event, reason, attempts, created_at, replayed_at, webhook"  # DeadLetter


class OutboxUnavailable(Exception):
    """The outbox cannot take a write now (disk full, read-only, locked): the webhook must get 503."""


class OutboxRefused(Exception):
    """ENGINE_DB names something this engine must not use as its outbox, however often it is retried: a file
    of another application, a newer engine's schema, a URL that cannot be read safely, a driver not installed.
    The message says which, and never shows a password."""


@dataclass(frozen=True)
class StoredWebhook:
    key: str
    event: str
    body: bytes  # JSON envelope, token removed


@dataclass(frozen=True)
class NewMessage:
    message_id: str
    event: str
    body: bytes


@dataclass(frozen=True)
class PendingWebhook:
    """A stored webhook waiting to be mapped, as a processing worker claims it."""

    id: int
    key: str
    event: str
    body: bytes  # the envelope without its token
    received_at: float


@dataclass(frozen=True)
class Processed:
    """What processing made of one webhook: its messages, the reason it is a dead letter, `held`: no mapping
    maps its event yet, so it is kept, unmapped, until one is loaded (see Outbox.release_unmapped), or waiting for
    Aircall's REST API (`waiting_until`).

    `id` is the stored webhook's row when the webhook came through the gateway (it is marked processed in the
    same transaction that stores its messages); None for the backfill and the replay, whose webhook is stored
    then, already processed.
    """

    webhook: StoredWebhook
    messages: Sequence[NewMessage] = ()
    dead_reason: str | None = None
    id: int | None = None
    held: bool = False
    # Its mapping reads Aircall's REST API, which cannot answer now: not processed, taken again at this time
    # (unix seconds), and `waiting_reason` says why (engine.processing.fetch).
    waiting_until: float | None = None
    waiting_reason: str | None = None


@dataclass(frozen=True)
class Claimed:
    id: int
    message_id: str
    body: bytes
    attempts: int
    created_at: float


@dataclass(frozen=True)
class DeadLetter:
    id: int
    message_id: str | None
    event: str
    reason: str
    attempts: int
    created_at: float
    replayed_at: float | None
    webhook: bytes


@dataclass(frozen=True)
class OutboxStats:
    pending: int
    due: int
    delivered: int
    dead_letters: int
    oldest_pending_age: float | None  # seconds
    last_error: str | None
    unprocessed: int = 0  # webhooks stored by the gateway, not yet mapped
    oldest_unprocessed_age: float | None = None  # seconds: the processing lag
    # Webhooks held because no mapping maps their event, by event (the UNMAPPED_SHOWN most numerous: names are
    # anyone's with the token, so no listing grows with them): mapped once a mapping for it is loaded.
    unmapped: dict[str, int] = field(default_factory=dict)
    waiting_for_api: int = 0  # webhooks whose mapping reads Aircall's REST API, put back until it can answer
    unmapped_total: int = 0  # held webhooks, of every event
    unmapped_events: int = 0  # how many events they are of
    # Readiness (engine.server.health) reads these: a dead letter that is new says dead letters grow, and a
    # webhook stored at all says the first one has come. Both from the outbox, so every replica and every
    # `--workers` process gives the same answer.
    newest_dead_letter_age: float | None = None  # seconds since the newest dead letter not replayed
    newest_webhook_age: float | None = None  # seconds since the newest stored webhook; None: none stored

    def as_dict(self) -> dict[str, object]:
        return {
            "unprocessed": self.unprocessed,
            "oldest_unprocessed_age_seconds": _rounded(self.oldest_unprocessed_age),
            "unmapped": self.unmapped_total,
            "unmapped_events": self.unmapped_events,
            "unmapped_by_event": dict(sorted(self.unmapped.items())),  # the most numerous (unmapped_events: all)
            "waiting_for_aircall_api": self.waiting_for_api,
            "pending": self.pending,
            "due": self.due,
            "delivered": self.delivered,
            "dead_letters": self.dead_letters,
            "newest_dead_letter_age_seconds": _rounded(self.newest_dead_letter_age),
            "newest_webhook_age_seconds": _rounded(self.newest_webhook_age),
            "oldest_pending_age_seconds": _rounded(self.oldest_pending_age),
            "last_error": self.last_error,
        }


UNMAPPED_SHOWN = 100  # held events listed by name, the most numerous first


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


# -- console reads: what the web console (engine.console) shows. Read-only, indexed, bounded by a limit. -------


@dataclass(frozen=True)
class WebhookSummary:
    """A stored webhook without its body: one row of the console's recent webhooks."""

    id: int
    key: str
    event: str
    received_at: float
    processed_at: float | None  # None while it waits to be mapped
    held: bool = False  # no mapping maps its event yet: processed, nothing made of it


@dataclass(frozen=True)
class StoredMessage:
    """A message as the outbox keeps it: `body` is exactly what is (or was) sent to Segment."""

    id: int
    message_id: str
    event: str
    body: bytes
    created_at: float
    attempts: int
    last_error: str | None
    delivered_at: float | None


@dataclass(frozen=True)
class Activity:
    """Per-minute counts, oldest minute first: minute i covers [start + 60 i, start + 60 (i + 1))."""

    start: float
    received: list[int]  # webhooks stored by the gateway (or the backfill, or a replay)
    processed: list[int]  # webhooks mapped: to messages or to a dead letter
    delivered: list[int]  # messages Segment acknowledged
    estimated: bool = False  # received and processed counted from id ranges (see ACTIVITY_EXACT_ROWS)


# Rows are inserted in time order, so a time set at insert grows with the id, give or take the moments two
# processes commit in. Reads that look for "since T" bisect the primary key for T minus this, then filter on
# the time exactly: an index on each time column would cost every webhook's commit.
CONSOLE_SLACK_SECONDS = 300.0
# Up to this many webhooks in the window, they are counted row by row. Past it (a busy hour: reading each row
# would take seconds), each minute's count is the difference of the ids that begin it and the next: exact while
# ids have no gaps (SQLite's, within the hour), an upper bound otherwise (PostgreSQL's sequence skips a value
# for each duplicate); the console then says "about".
ACTIVITY_EXACT_ROWS = 20_000

# Helpers both stores use, each with its own placeholder and SQL dialect.


def first_id(conn: Any, table: str, column: str, at: float, strictly_after: bool = False, *, mark: str = "?") -> int:
    """The smallest id from which `column` (a time set at insert, so growing with the id) is at least `at` (more
    than `at` with `strictly_after`), by bisection of the primary key: a few dozen lookups, whatever the table's
    size. A null counts as later than any time (a webhook not mapped yet: mapping goes in id order). MAX(id) + 1
    when no row is that late."""
    # Two statements: SQLite reads MIN and MAX of the primary key in one step each, but both at once by a scan.
    low = conn.execute(f"SELECT MIN(id) FROM {table}").fetchone()[0]
    high = conn.execute(f"SELECT MAX(id) FROM {table}").fetchone()[0]
    if high is None:
        return 0
    high += 1
    while low < high:
        middle = (low + high) // 2
        row_id, value = conn.execute(
            f"SELECT id, {column} FROM {table} WHERE id >= {mark} ORDER BY id LIMIT 1", (middle,)
        ).fetchone()
        if value is None or value > at or (value == at and not strictly_after):
            high = middle
        else:
            low = row_id + 1
    return low


def per_minute(
    conn: Any,
    column: str,
    edges: list[float],
    *,
    table: str = "webhooks",
    mark: str = "?",
    minute: str = "CAST(({column} - ?) / 60 AS INTEGER)",
) -> tuple[list[int], bool]:
    """Webhooks per minute by `column` of `table` (keyed by the webhook's id) between consecutive `edges`; whether
    counted exactly (not estimated). `mark` is the driver's placeholder, `minute` the SQL of a row's minute (its
    dialect differs)."""
    minutes = len(edges) - 1
    first = first_id(conn, table, column, edges[0] - CONSOLE_SLACK_SECONDS, mark=mark)
    last = conn.execute(f"SELECT MAX(id) FROM {table}").fetchone()[0] or 0
    if last - first < ACTIVITY_EXACT_ROWS:
        counts = [0] * minutes
        rows = conn.execute(
            f"SELECT {minute.format(column=column)} AS minute, COUNT(*) FROM {table} "
            f"WHERE id >= {mark} AND {column} >= {mark} GROUP BY minute",
            (edges[0], first, edges[0]),
        ).fetchall()
        for minute, count in rows:
            if 0 <= minute < minutes:
                counts[minute] = count
        return counts, True
    bounds = [first_id(conn, table, column, edge, mark=mark) for edge in edges]
    return [max(high - low, 0) for low, high in itertools.pairwise(bounds)], False


WEBHOOK_OUTCOMES = ("waiting", "held", "mapped", "dead letter")  # what the console's filter and rows say
# Ids one page of a filtered search reads at most, from where the page begins: the filters on the event, the
# outcome and the call id have no index (one on each would cost every webhook's commit), so a page costs the
# same whatever the table holds, and a search with few matches continues from where the last page stopped.
FIND_SCAN_ROWS = 20_000


@dataclass(frozen=True)
class WebhookFilter:
    """What the console's Webhooks page filters on; None: any."""

    event: str | None = None  # an event's name, or a prefix ending in '*' (call.*)
    outcome: str | None = None  # one of WEBHOOK_OUTCOMES
    call_id: int | None = None  # data.id of a call event, or data.call_id (transcripts, summaries, ...)
    since: float | None = None  # received at or after (unix seconds)
    until: float | None = None  # received before

    @property
    def narrows(self) -> bool:
        return any(value is not None for value in (self.event, self.outcome, self.call_id, self.since, self.until))


@dataclass(frozen=True)
class FoundWebhooks:
    rows: list[WebhookSummary]  # newest first
    next_before: int | None  # where the next (older) page begins; None: nothing older matches
    searched_down_to: int | None  # the lowest id this page read: a page with few rows says how far it looked


@dataclass(frozen=True)
class WebhookColumns:
    """A store's SQL for find_webhooks: its tables, columns and placeholder, and its JSON text of the body."""

    mark: str
    tables: str  # FROM
    summary: str  # the WebhookSummary columns
    id: str
    event: str
    received: str
    processed: str
    unmapped: str
    body: str
    body_contains: str  # SQL true when the body holds the parameter's text
    body_field: str  # SQL of the body's JSON field named by a path parameter ({data,id} or $.data.id), as text
    call_id_path: str
    related_call_path: str


def find_webhooks(
    conn: Any, found: WebhookFilter, limit: int, before: int | None, sql: WebhookColumns, scan: int = FIND_SCAN_ROWS
) -> FoundWebhooks:
    """Stored webhooks matching `found`, newest first, with ids below `before`: at most `limit`, reading at most
    `scan` ids (by the primary key) below `before`. The time range narrows the ids by bisection first."""
    mark = sql.mark
    floor = conn.execute("SELECT MIN(id) FROM webhooks").fetchone()[0]
    top = conn.execute("SELECT MAX(id) FROM webhooks").fetchone()[0]
    if floor is None:
        return FoundWebhooks([], None, None)
    high = min(before if before is not None else top + 1, top + 1)
    if found.until is not None:
        high = min(high, first_id(conn, "webhooks", "received_at", found.until + CONSOLE_SLACK_SECONDS, mark=mark))
    if found.since is not None:
        floor = max(floor, first_id(conn, "webhooks", "received_at", found.since - CONSOLE_SLACK_SECONDS, mark=mark))
    low = max(floor, high - scan)
    clauses, params = [f"{sql.id} < {mark}", f"{sql.id} >= {mark}"], [high, low]
    if found.since is not None:
        clauses.append(f"{sql.received} >= {mark}")
        params.append(found.since)
    if found.until is not None:
        clauses.append(f"{sql.received} < {mark}")
        params.append(found.until)
    if found.event is not None:
        if found.event.endswith("*"):
            prefix = found.event[:-1].replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            clauses.append(f"{sql.event} LIKE {mark} ESCAPE '\\'")
            params.append(prefix + "%")
        else:
            clauses.append(f"{sql.event} = {mark}")
            params.append(found.event)
    if found.call_id is not None:
        text = str(found.call_id)
        field = sql.body_field
        clauses.append(
            f"({sql.body_contains} AND (({sql.event} LIKE {mark} AND {field} = {mark}) OR {field} = {mark}))"
        )
        params += [text, "call.%", sql.call_id_path, text, sql.related_call_path, text]
    dead = f"{sql.body} IN (SELECT webhook FROM dead_letters WHERE replayed_at IS NULL)"
    outcome = {
        None: None,
        "waiting": f"{sql.processed} IS NULL",
        "held": f"{sql.unmapped} IS NOT NULL",
        "dead letter": f"{sql.processed} IS NOT NULL AND {dead}",
        "mapped": f"{sql.processed} IS NOT NULL AND {sql.unmapped} IS NULL AND NOT {dead}",
    }[found.outcome]
    if outcome:
        clauses.append(outcome)
    rows = conn.execute(
        f"SELECT {sql.summary} FROM {sql.tables} WHERE {' AND '.join(clauses)} ORDER BY {sql.id} DESC LIMIT {mark}",
        [*params, limit],
    ).fetchall()
    summaries = [WebhookSummary(*row) for row in rows]
    if len(summaries) == limit:
        return FoundWebhooks(summaries, summaries[-1].id, summaries[-1].id)
    return FoundWebhooks(summaries, low if low > floor else None, low)


# -- end of console reads ---------------------------------------------------------------------------------------


class Outbox(Protocol):
    """What delivery, the webhook endpoint and the CLI need of a store."""

    def append(self, webhooks: Sequence[StoredWebhook]) -> list[bool]: ...
    def claim_webhooks(self, limit: int, lease_seconds: float, owner: str) -> list[PendingWebhook]: ...
    def commit_processed(self, batch: Sequence[Processed]) -> list[int]: ...
    def enqueue(self, batch: Sequence[tuple[StoredWebhook, Sequence[NewMessage]]]) -> list[int]: ...
    def keep_webhook(self, webhook: StoredWebhook, reason: str) -> None: ...
    def release_unmapped(self, events: Iterable[str]) -> int:
        """Held webhooks of these events (now mapped) back to processing, oldest first as ever; how many."""
        ...

    def claim(self, limit: int, lease_seconds: float, owner: str) -> list[Claimed]: ...
    def ack(self, ids: Iterable[int]) -> None: ...
    def retry(
        self, ids: Iterable[int], delay: float, error: str | None, owner: str, attempted: bool = True
    ) -> None: ...
    def dead(self, ids: Iterable[int], reason: str) -> None: ...
    def release(self, owner: str) -> None: ...
    def stats(self) -> OutboxStats: ...
    def prune(self, older_than_seconds: float) -> int: ...
    def next_due(self) -> float | None: ...
    def retry_now(self) -> int: ...
    def dead_letters(self, include_replayed: bool = False, ids: Sequence[int] | None = None) -> list[DeadLetter]: ...
    def mark_replayed(self, ids: Iterable[int]) -> None: ...
    def discard_dead_letters(self, ids: Sequence[int] | None) -> list[DeadLetter]: ...
    def message_bodies(self) -> list[bytes]: ...
    def backfill_start(self, resource: str, since: int, until: int) -> tuple[int, str | None]: ...
    def backfill_save(
        self, resource: str, since: int, until: int, state: str, done_until: int, fetched: int, queued: int
    ) -> None: ...
    def backfill_finished(self, resource: str, since: int, until: int) -> None: ...
    def backfill_unfinished_until(self, resource: str, since: int) -> int | None: ...
    def close(self) -> None: ...

    # -- console reads (engine.console): each bounded by a limit or a time window, each served by an index --
    def recent_webhooks(self, limit: int, before: int | None = None) -> list[WebhookSummary]:
        """The newest stored webhooks (ids below `before`), newest first."""
        ...

    def webhook_body(self, webhook_id: int) -> tuple[WebhookSummary, bytes] | None:
        """One stored webhook and its body (the envelope without its token)."""
        ...

    def webhook_ids(self, keys: Sequence[str]) -> dict[str, int]:
        """The row id of each stored webhook key that is still there."""
        ...

    def message_counts(
        self, keys: Sequence[str], since: float, scan_limit: int
    ) -> tuple[dict[str, tuple[int, int]], bool]:
        """(messages, delivered) of each webhook key, among messages created since `since` (a webhook's messages
        are created when it is mapped, after it was received); False when more than `scan_limit` messages were
        created since, and only the newest `scan_limit` were counted."""
        ...

    def messages_of(self, key: str, moments: Sequence[float], slack: float) -> list[StoredMessage]:
        """The messages of one webhook created within `slack` seconds of these moments (its mapping, its
        replays), oldest first."""
        ...

    def activity(self, start: float, minutes: int) -> Activity:
        """Webhooks received and processed, messages delivered, per minute from `start`."""
        ...

    def recent_dead_letters(self, limit: int, before: int | None = None) -> list[DeadLetter]:
        """Dead letters not replayed (ids below `before`), newest first."""
        ...

    def dead_letters_since(self, since: float, limit: int) -> list[DeadLetter]:
        """Dead letters created since `since`, replayed ones too, oldest first."""
        ...

    def find_webhooks(self, found: WebhookFilter, limit: int, before: int | None = None) -> FoundWebhooks:
        """Stored webhooks that match, newest first, ids below `before` (keyset paging); each page reads at most
        FIND_SCAN_ROWS ids, and says where the next one begins."""
        ...

    # -- console sessions: signed cookies, ended here so that a copied cookie stops working at sign-out --
    def end_console_session(self, session: str, at: float) -> None:
        """Record that the session `session` ended at `at`; ALL_SESSIONS ends every session begun before `at`."""
        ...

    def console_session_ended(self, session: str, begun_at: float) -> bool:
        """Whether this session was ended, or every session begun before a moment after `begun_at`."""
        ...


ALL_SESSIONS = "*"  # end_console_session's key for "every session begun before this"
CONSOLE_SESSION_SECONDS = 12 * 3600  # a console session's lifetime: what is ended is remembered as long


_LOOKS_LIKE_A_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/")


def sqlite_path(setting: str) -> Path:
    """ENGINE_DB: a file path, or sqlite:///relative/path and sqlite:////absolute/path."""
    if setting.startswith("sqlite:///"):
        return Path(setting.removeprefix("sqlite:///"))
    # `postgresql:/host/db` (a slash short) is a URL mistyped, not a file to create in a folder `postgresql:`.
    if "://" in setting or _LOOKS_LIKE_A_URL.match(setting):
        raise ValueError(
            "neither a SQLite file (a path, or sqlite:///relative/path or sqlite:////absolute/path) "
            "nor a postgresql:// URL"
        )
    return Path(setting)


def is_postgres(setting: str) -> bool:
    return setting.startswith(("postgresql://", "postgres://"))


_QUERY_PASSWORD = re.compile(r"([?&](?:ssl)?password=)[^&#]*")  # libpq's password and sslpassword


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/*")


def describe_db(setting: str) -> str:
    """ENGINE_DB as logs may show it: a PostgreSQL URL without its password, wherever it is written (a URL
    mistyped with one slash, too)."""
    scheme = _SCHEME.match(setting)
    if scheme is None:
        return setting
    sep, rest = "", setting[scheme.end() :]
    scheme_text = scheme.group()
    # The last '@' ends the credentials: a password may hold an '@' its writer did not percent-encode.
    credentials, at, location = rest.rpartition("@")
    if at and ":" in credentials:
        rest = f"{credentials.split(':', 1)[0]}:***@{location}"
    return scheme_text + sep + _QUERY_PASSWORD.sub(r"\1***", rest)


def without_password(text: str, setting: str) -> str:
    """`text` (a driver's error, which may quote the URL or a piece of it) with the URL's password masked,
    as written and percent-decoded: libpq quotes a malformed password in its reason ('invalid percent-encoded
    token: "100%secret"')."""
    text = text.replace(setting, describe_db(setting))
    credentials = setting.partition("://")[2].rpartition("@")[0]
    password = credentials.partition(":")[2]
    for secret in {password, urllib.parse.unquote(password)}:
        if len(secret) >= 2:  # a one-letter password would mask every such letter of the reason
            text = text.replace(secret, "***")
    for match in _QUERY_PASSWORD.finditer(setting):
        value = match.group().partition("=")[2]
        if len(value) >= 2:
            text = text.replace(value, "***")
    return text


def check_postgres_url(setting: str) -> None:
    """libpq reads an unencoded '@', '/', '?' or '#' in a password as the start of the host, path or query,
    and its errors then quote what it took for a host name: part of the password. Refused before connecting."""
    credentials, at, _ = setting.partition("://")[2].rpartition("@")
    if at and re.search(r"[@/?#]", credentials):
        raise OutboxRefused(
            "the user name or password in the postgresql:// URL holds '@', '/', '?' or '#': "
            "percent-encode them (%40, %2F, %3F, %23)"
        )


@functools.lru_cache(maxsize=16)
def _token_pair(token: str) -> re.Pattern[bytes]:
    encoded = json.dumps(token)[1:-1].encode()
    return re.compile(rb'"token"\s*:\s*"' + re.escape(encoded) + rb'"')


def _blank_token(raw: bytes, token: str) -> bytes | None:
    pattern = _token_pair(token)
    found = pattern.findall(raw)
    if len(found) != 1:
        return None
    blanked = pattern.sub(b'"token":""', raw)
    return blanked if (not token or token.encode() not in blanked) else None


# The lease owner of a webhook put back until Aircall's REST API can answer: no worker's, so that none takes it
# again before its lease ends (a worker takes its own leased webhooks at once), and counted by stats().
WAITING_FOR_API = "aircall-api"


def new_owner() -> str:
    """An id for one delivery worker: host process and a random part."""
    return f"{os.getpid()}-{uuid.uuid4().hex[:8]}"


def stored_webhook(webhook: Webhook, raw: bytes | None = None) -> StoredWebhook:
    """The webhook as the outbox keeps it, to be mapped and for replay: its envelope without the token.

    From the raw body when the token can be blanked in it for certain (one `"token": "..."` pair holding it):
    re-encoding a 3 KB envelope costs a tenth of a webhook's time. Otherwise it is encoded afresh.
    """
    body = _blank_token(raw, webhook.token) if raw is not None else None
    if body is None:
        envelope = {
            "resource": webhook.resource,
            "event": webhook.event,
            "timestamp": webhook.timestamp,
            "data": webhook.data,
        }
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False, default=str).encode()
    return StoredWebhook(stored_key(body), webhook.event, body)


def stored_key(body: bytes) -> str:
    """The dedupe key of a stored webhook: a digest of its bytes, so that Aircall's redelivery of one webhook is
    stored once. It costs microseconds on the request path; a redelivery that differs in a byte (a recording
    link signed afresh) is stored twice, and its messages, whose ids come from its content, are stored once."""
    return hashlib.sha256(body).hexdigest()[:32]  # SHA-256 runs on the CPU's SHA extensions: 2 µs for 3 KB
