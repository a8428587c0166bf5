"""The outbox on PostgreSQL, for several `engine serve` replicas sharing one database (ENGINE_DB=postgresql://…).

Same interface and behaviour as the SQLite outbox. What differs is what several machines need:
- claims take rows with `FOR UPDATE SKIP LOCKED`, so replicas never wait on, nor take, each other's batch;
- every time (due, lease, delivered) is the database's clock, so replicas with drifting clocks agree;
- the schema is created and migrated under an advisory lock, so replicas starting together do it once;
- a lost connection is an OutboxUnavailable (the webhook gets 503) and the pool reconnects by itself.
"""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from engine.outbox import (
    ALL_SESSIONS,
    CONSOLE_SESSION_SECONDS,
    CONSOLE_SLACK_SECONDS,
    DEAD_LETTER_COLUMNS,
    UNMAPPED_SHOWN,
    WAITING_FOR_API,
    Activity,
    Claimed,
    DeadLetter,
    NewMessage,
    OutboxRefused,
    OutboxStats,
    OutboxUnavailable,
    PendingWebhook,
    Processed,
    StoredMessage,
    StoredWebhook,
    WebhookSummary,
    describe_db,
    first_id,
    per_minute,
)
from engine.outbox.base import FoundWebhooks, WebhookColumns, WebhookFilter, find_webhooks, without_password

T = TypeVar("T")
_CONNECTION_ERRORS = (PoolTimeout, psycopg.OperationalError)
SCHEMA_VERSION = 6
_NOW = "extract(epoch from clock_timestamp())"


_MIGRATION_LOCK = 0x61697263616C6C  # any constant the replicas share: 'aircall'

_MIGRATIONS: dict[int, list[str]] = {
    1: [
        """CREATE TABLE webhooks (
            id          BIGSERIAL PRIMARY KEY,
            key         TEXT NOT NULL UNIQUE,
            event       TEXT NOT NULL,
            received_at DOUBLE PRECISION NOT NULL,
            body        BYTEA NOT NULL
        )""",
        """CREATE TABLE messages (
            id           BIGSERIAL PRIMARY KEY,
            message_id   TEXT NOT NULL UNIQUE,
            webhook_key  TEXT NOT NULL,
            event        TEXT NOT NULL,
            body         BYTEA NOT NULL,
            size         INTEGER NOT NULL,
            created_at   DOUBLE PRECISION NOT NULL,
            due_at       DOUBLE PRECISION NOT NULL,
            attempts     INTEGER NOT NULL DEFAULT 0,
            lease_owner  TEXT,
            last_error   TEXT,
            delivered_at DOUBLE PRECISION
        )""",
        "CREATE INDEX messages_pending ON messages (due_at) WHERE delivered_at IS NULL",
        "CREATE INDEX messages_delivered ON messages (delivered_at) WHERE delivered_at IS NOT NULL",
        """CREATE TABLE dead_letters (
            id          BIGSERIAL PRIMARY KEY,
            message_id  TEXT,
            event       TEXT NOT NULL,
            body        BYTEA,
            webhook     BYTEA NOT NULL,
            reason      TEXT NOT NULL,
            attempts    INTEGER NOT NULL DEFAULT 0,
            created_at  DOUBLE PRECISION NOT NULL,
            replayed_at DOUBLE PRECISION
        )""",
    ],
    2: [
        """CREATE TABLE backfills (
            resource    TEXT NOT NULL,
            since       BIGINT NOT NULL,
            until       BIGINT NOT NULL,
            done_until  BIGINT NOT NULL,
            fetched     INTEGER NOT NULL DEFAULT 0,
            queued      INTEGER NOT NULL DEFAULT 0,
            finished_at DOUBLE PRECISION,
            updated_at  DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (resource, since, until)
        )""",
    ],
    # Raw webhooks stored by the gateway, mapped afterwards (see engine.outbox, version 3).
    3: [
        "ALTER TABLE webhooks ADD COLUMN processed_at DOUBLE PRECISION",
        "ALTER TABLE webhooks ADD COLUMN lease_until DOUBLE PRECISION NOT NULL DEFAULT 0",
        "ALTER TABLE webhooks ADD COLUMN lease_owner TEXT",
        "UPDATE webhooks SET processed_at = received_at",
        "CREATE INDEX webhooks_unprocessed ON webhooks (id) WHERE processed_at IS NULL",
    ],
    4: ["ALTER TABLE backfills ADD COLUMN state TEXT"],
    # Webhooks held because no mapping maps their event (see engine.outbox.sqlite, version 6).
    5: [
        "ALTER TABLE webhooks ADD COLUMN unmapped_event TEXT",
        "CREATE INDEX webhooks_unmapped ON webhooks (unmapped_event) WHERE unmapped_event IS NOT NULL",
    ],
    # Console sessions ended by signing out (see engine.outbox.sqlite, version 7).
    6: ["CREATE TABLE console_signouts (session TEXT PRIMARY KEY, at DOUBLE PRECISION NOT NULL)"],
}


def _older(where: str, version: int) -> str:
    return (
        f"{where} has outbox schema {version}, older than this engine's {SCHEMA_VERSION}: start the server "
        "once (it migrates the outbox), then ask again"
    )


def _dead_letter(row: tuple[Any, ...]) -> DeadLetter:
    return DeadLetter(*row[:7], bytes(row[7]))  # the webhook comes back as a memoryview


class PostgresOutbox:
    """Thread-safe: each operation takes a pooled connection for one transaction."""

    RETRY_AFTER_FAILURE = 1.0  # seconds during which a failed database is not asked again

    def __init__(
        self,
        url: str,
        *,
        max_connections: int = 4,
        connect_timeout: float = 3.0,
        read_only: bool = False,
        synced: bool = True,
        migrate: bool = True,
        create: bool = True,
    ) -> None:
        self.path = describe_db(url)  # what logs and errors may show: never the password
        self.migrate = migrate
        self.create = create
        self._down_until = 0.0
        self._down_reason = ""
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=max_connections,
            kwargs={  # transactions: explicit
                "autocommit": True,
                "connect_timeout": int(connect_timeout),
                **({} if synced else {"options": "-c synchronous_commit=off"}),
            },
            timeout=connect_timeout,
            open=False,
            check=ConnectionPool.check_connection,
        )
        # One plain connection first: libpq's reason at once, where the pool would wait out its timeout and
        # say only "pool initialization incomplete after 3.0 sec".
        reason = _why_no_connection(url, connect_timeout)
        if reason is not None:
            raise OutboxUnavailable(f"cannot connect to PostgreSQL: {without_password(reason, url)}")
        try:
            self._pool.open(wait=True, timeout=connect_timeout)
        except _CONNECTION_ERRORS as exc:
            self._pool.close()
            reason = without_password(_first_line(exc), url)
            raise OutboxUnavailable(f"cannot connect to PostgreSQL: {reason}") from None
        try:
            self._write(self._check_schema if read_only else self._migrate)
        except psycopg.Error as exc:  # a role without the right to read or create the outbox's tables, say
            self._pool.close()
            raise OutboxRefused(f"PostgreSQL refused: {without_password(_first_line(exc), url)}{_hint(exc)}") from None
        except BaseException:
            self._pool.close()
            raise

    # -- plumbing ------------------------------------------------------------------------------------------

    def _write(self, work: Callable[[psycopg.Connection], T]) -> T:
        """One transaction. A connection found broken (the server restarted since it was opened) is dropped by
        the pool and the work tried once more on a fresh one: every operation here is idempotent (inserts
        ignore what exists, updates set values), so a commit whose answer was lost does no harm twice."""
        if time.monotonic() < self._down_until:
            # Known down a moment ago: answer at once, so that webhooks queued behind this one get their 503
            # in milliseconds instead of each waiting out a connection timeout.
            raise OutboxUnavailable(f"PostgreSQL unavailable: {self._down_reason}")
        for attempt in (1, 2):
            try:
                with self._pool.connection() as conn, conn.transaction():
                    return work(conn)
            except psycopg.OperationalError as exc:
                if attempt == 2 or self._pool.closed:
                    self._mark_down(_first_line(exc))
                    raise OutboxUnavailable(_first_line(exc)) from exc
            except _CONNECTION_ERRORS as exc:
                self._mark_down(f"no connection: {_first_line(exc)}")
                raise OutboxUnavailable(f"no PostgreSQL connection: {_first_line(exc)}") from exc
        raise AssertionError("unreachable")

    def _mark_down(self, reason: str) -> None:
        self._down_until = time.monotonic() + self.RETRY_AFTER_FAILURE
        self._down_reason = reason

    def _check_schema(self, conn: psycopg.Connection) -> None:
        """For a read-only command: the outbox is there and not newer than this engine, and nothing is written."""
        if conn.execute("SELECT to_regclass('engine_schema')").fetchone()[0] is None:
            raise OutboxRefused(f"{self.path} is not an aircall-segment outbox: it has no outbox tables")
        row = conn.execute("SELECT version FROM engine_schema").fetchone()
        version = row[0] if row else 0
        self._refuse_newer(version)
        if version < SCHEMA_VERSION:
            raise OutboxRefused(_older(self.path, version))

    def _refuse_newer(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise OutboxRefused(
                f"{self.path} has outbox schema {version}, newer than this engine's {SCHEMA_VERSION}: "
                "upgrade aircall-segment"
            )

    def _migrate(self, conn: psycopg.Connection) -> None:
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        # Created only where an outbox may be created or migrated: the other commands need no CREATE right.
        exists = conn.execute("SELECT to_regclass('engine_schema')").fetchone()[0] is not None
        if not exists and not self.create:
            raise OutboxRefused(f"{self.path} is not an aircall-segment outbox: it has no outbox tables")
        conn.execute("CREATE TABLE IF NOT EXISTS engine_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM engine_schema").fetchone()
        version = row[0] if row else 0
        self._refuse_newer(version)
        if version == 0 and not self.create:  # the table just made is rolled back with this transaction
            raise OutboxRefused(f"{self.path} is not an aircall-segment outbox: it has no outbox tables")
        if 0 < version < SCHEMA_VERSION and not self.migrate:
            raise OutboxRefused(_older(self.path, version))
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for statement in _MIGRATIONS[target]:
                conn.execute(statement)
        if row is None:
            conn.execute("INSERT INTO engine_schema (version) VALUES (%s)", (SCHEMA_VERSION,))
        else:
            conn.execute("UPDATE engine_schema SET version = %s", (SCHEMA_VERSION,))

    def close(self) -> None:
        self._pool.close()

    # -- writes ----------------------------------------------------------------------------------------------

    def append(self, webhooks: Sequence[StoredWebhook]) -> list[bool]:
        def work(conn: psycopg.Connection) -> list[bool]:
            added = []
            with conn.cursor() as cur:
                for webhook in webhooks:
                    cur.execute(
                        f"INSERT INTO webhooks (key, event, received_at, body) VALUES (%s, %s, {_NOW}, %s) "
                        "ON CONFLICT (key) DO NOTHING",
                        (webhook.key, webhook.event, webhook.body),
                    )
                    added.append(cur.rowcount > 0)
            return added

        return self._write(work)

    def claim_webhooks(self, limit: int, lease_seconds: float, owner: str) -> list[PendingWebhook]:
        def work(conn: psycopg.Connection) -> list[PendingWebhook]:
            rows = conn.execute(
                f"UPDATE webhooks SET lease_until = {_NOW} + %s, lease_owner = %s WHERE id IN ("
                f"  SELECT id FROM webhooks WHERE processed_at IS NULL AND (lease_until <= {_NOW} OR lease_owner = %s)"
                "  ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED"
                ") RETURNING id, key, event, body, received_at",
                (lease_seconds, owner, owner, limit),
            ).fetchall()
            return sorted((PendingWebhook(r[0], r[1], r[2], bytes(r[3]), r[4]) for r in rows), key=lambda w: w.id)

        return self._write(work)

    def commit_processed(self, batch: Sequence[Processed]) -> list[int]:
        def work(conn: psycopg.Connection) -> list[int]:
            added = []
            with conn.cursor() as cur:
                for item in batch:
                    webhook = item.webhook
                    if item.waiting_until is not None:  # not processed: taken again once the lease ends
                        if item.id is not None:
                            cur.execute(  # the database's clock, as every time here: this one's delay
                                f"UPDATE webhooks SET lease_until = {_NOW} + %s, lease_owner = %s "
                                "WHERE id = %s AND processed_at IS NULL",
                                (max(item.waiting_until - time.time(), 0.0), WAITING_FOR_API, item.id),
                            )
                        added.append(0)
                        continue
                    held = webhook.event if item.held else None
                    if item.id is not None:
                        cur.execute(
                            f"UPDATE webhooks SET processed_at = {_NOW}, lease_owner = NULL, unmapped_event = %s "
                            "WHERE id = %s AND processed_at IS NULL",
                            (held, item.id),
                        )
                        if not cur.rowcount:  # another replica finished it after this one's lease ran out
                            added.append(0)
                            continue
                    else:
                        cur.execute(
                            "INSERT INTO webhooks (key, event, received_at, body, processed_at, unmapped_event) "
                            f"VALUES (%s, %s, {_NOW}, %s, {_NOW}, %s) ON CONFLICT (key) DO NOTHING",
                            (webhook.key, webhook.event, webhook.body, held),
                        )
                    if held is not None:
                        added.append(0)
                        continue
                    if item.dead_reason is not None:
                        cur.execute(
                            "INSERT INTO dead_letters (message_id, event, body, webhook, reason, created_at) "
                            f"VALUES (NULL, %s, NULL, %s, %s, {_NOW})",
                            (webhook.event, webhook.body, item.dead_reason[:2000]),
                        )
                        added.append(0)
                        continue
                    count = 0
                    for m in item.messages:
                        cur.execute(
                            "INSERT INTO messages (message_id, webhook_key, event, body, size, created_at, due_at) "
                            f"VALUES (%s, %s, %s, %s, %s, {_NOW}, {_NOW}) ON CONFLICT (message_id) DO NOTHING",
                            (m.message_id, webhook.key, m.event, m.body, len(m.body)),
                        )
                        count += cur.rowcount
                    added.append(count)
            return added

        return self._write(work)

    def enqueue(self, batch: Sequence[tuple[StoredWebhook, Sequence[NewMessage]]]) -> list[int]:
        return self.commit_processed([Processed(webhook, messages) for webhook, messages in batch])

    def keep_webhook(self, webhook: StoredWebhook, reason: str) -> None:
        self.commit_processed([Processed(webhook, dead_reason=reason)])

    def release_unmapped(self, events: Iterable[str]) -> int:
        wanted = sorted(set(events))

        def work(conn: psycopg.Connection) -> int:
            held = {
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT unmapped_event FROM webhooks WHERE unmapped_event IS NOT NULL"
                ).fetchall()
            }
            release = [event for event in wanted if event in held]
            if not release:
                return 0
            return conn.execute(
                "UPDATE webhooks SET processed_at = NULL, lease_until = 0, lease_owner = NULL, unmapped_event = NULL "
                "WHERE unmapped_event = ANY(%s)",
                (release,),
            ).rowcount

        return self._write(work)

    def claim(self, limit: int, lease_seconds: float, owner: str) -> list[Claimed]:
        def work(conn: psycopg.Connection) -> list[Claimed]:
            rows = conn.execute(
                f"UPDATE messages SET due_at = {_NOW} + %s, lease_owner = %s WHERE id IN ("
                f"  SELECT id FROM messages WHERE delivered_at IS NULL AND due_at <= {_NOW}"
                "  ORDER BY due_at LIMIT %s FOR UPDATE SKIP LOCKED"
                ") RETURNING id, message_id, body, attempts, created_at",
                (lease_seconds, owner, limit),
            ).fetchall()
            return sorted((Claimed(r[0], r[1], bytes(r[2]), r[3], r[4]) for r in rows), key=lambda c: c.id)

        return self._write(work)

    def ack(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        self._write(
            lambda conn: conn.execute(
                f"UPDATE messages SET delivered_at = {_NOW}, lease_owner = NULL, last_error = NULL, "
                "attempts = attempts + 1 WHERE id = ANY(%s)",
                (ids,),
            )
        )

    def retry(self, ids: Iterable[int], delay: float, error: str | None, owner: str, attempted: bool = True) -> None:
        ids = list(ids)
        self._write(
            lambda conn: conn.execute(
                f"UPDATE messages SET due_at = {_NOW} + %s, attempts = attempts + %s, "
                "last_error = COALESCE(%s, last_error), lease_owner = NULL "
                "WHERE id = ANY(%s) AND delivered_at IS NULL AND (lease_owner = %s OR lease_owner IS NULL)",
                (delay, int(attempted), error[:1000] if error else None, ids, owner),
            )
        )

    def dead(self, ids: Iterable[int], reason: str) -> None:
        ids = list(ids)

        def work(conn: psycopg.Connection) -> None:
            conn.execute(
                "INSERT INTO dead_letters (message_id, event, body, webhook, reason, attempts, created_at) "
                f"SELECT m.message_id, m.event, m.body, w.body, %s, m.attempts + 1, {_NOW} "
                "FROM messages m JOIN webhooks w ON w.key = m.webhook_key "
                "WHERE m.id = ANY(%s) AND m.delivered_at IS NULL",
                (reason[:2000], ids),
            )
            conn.execute("DELETE FROM messages WHERE id = ANY(%s) AND delivered_at IS NULL", (ids,))

        self._write(work)

    def release(self, owner: str) -> None:
        def work(conn: psycopg.Connection) -> None:
            conn.execute(
                f"UPDATE messages SET due_at = {_NOW}, lease_owner = NULL "
                f"WHERE lease_owner = %s AND delivered_at IS NULL AND due_at > {_NOW}",
                (owner,),
            )
            conn.execute(
                "UPDATE webhooks SET lease_until = 0, lease_owner = NULL "
                "WHERE lease_owner = %s AND processed_at IS NULL",
                (owner,),
            )

        self._write(work)

    def prune(self, older_than_seconds: float) -> int:
        def work(conn: psycopg.Connection) -> int:
            deleted = conn.execute(
                f"DELETE FROM messages WHERE delivered_at IS NOT NULL AND delivered_at < {_NOW} - %s",
                (older_than_seconds,),
            ).rowcount
            conn.execute(
                f"DELETE FROM dead_letters WHERE replayed_at IS NOT NULL AND replayed_at < {_NOW} - %s",
                (older_than_seconds,),
            )
            conn.execute(f"DELETE FROM console_signouts WHERE at < {_NOW} - %s", (CONSOLE_SESSION_SECONDS,))
            conn.execute(
                f"DELETE FROM webhooks WHERE received_at < {_NOW} - %s AND processed_at IS NOT NULL AND NOT EXISTS "
                "(SELECT 1 FROM messages m WHERE m.webhook_key = webhooks.key)",
                (older_than_seconds,),
            )
            return deleted

        return self._write(work)

    def retry_now(self) -> int:
        return self._write(
            lambda conn: (
                conn.execute(
                    f"UPDATE messages SET due_at = {_NOW} WHERE delivered_at IS NULL AND due_at > {_NOW} "
                    "AND lease_owner IS NULL"
                ).rowcount
            )
        )

    def mark_replayed(self, ids: Iterable[int]) -> None:
        ids = list(ids)
        self._write(
            lambda conn: conn.execute(f"UPDATE dead_letters SET replayed_at = {_NOW} WHERE id = ANY(%s)", (ids,))
        )

    def end_console_session(self, session: str, at: float) -> None:
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO console_signouts (session, at) VALUES (%s, %s) "
                "ON CONFLICT (session) DO UPDATE SET at = GREATEST(console_signouts.at, excluded.at)",
                (session, at),
            )
        )

    def console_session_ended(self, session: str, begun_at: float) -> bool:
        rows = self._write(  # the reads use the same transaction helper (engine.outbox.postgres's reads)
            lambda conn: conn.execute(
                "SELECT session, at FROM console_signouts WHERE session IN (%s, %s)", (session, ALL_SESSIONS)
            ).fetchall()
        )
        return any(key == session or at > begun_at for key, at in rows)

    def discard_dead_letters(self, ids: Sequence[int] | None) -> list[DeadLetter]:
        def work(conn: psycopg.Connection) -> list[DeadLetter]:
            query = "DELETE FROM dead_letters WHERE replayed_at IS NULL"
            params: tuple[object, ...] = ()
            if ids is not None:
                query += " AND id = ANY(%s)"
                params = (list(ids),)
            rows = conn.execute(query + f" RETURNING {DEAD_LETTER_COLUMNS}", params).fetchall()
            return sorted((_dead_letter(row) for row in rows), key=lambda letter: letter.id)

        return self._write(work)

    # -- reads -------------------------------------------------------------------------------------------

    def stats(self) -> OutboxStats:
        def work(conn: psycopg.Connection) -> OutboxStats:
            pending, due, oldest_age = conn.execute(
                f"SELECT COUNT(*), COUNT(*) FILTER (WHERE due_at <= {_NOW}), {_NOW} - MIN(created_at) "
                "FROM messages WHERE delivered_at IS NULL"
            ).fetchone()
            delivered = conn.execute("SELECT COUNT(*) FROM messages WHERE delivered_at IS NOT NULL").fetchone()[0]
            dead, newest_dead = conn.execute(
                f"SELECT COUNT(*), {_NOW} - MAX(created_at) FROM dead_letters WHERE replayed_at IS NULL"
            ).fetchone()
            newest_webhook = conn.execute(
                f"SELECT {_NOW} - received_at FROM webhooks ORDER BY id DESC LIMIT 1"
            ).fetchone()
            last = conn.execute(
                "SELECT last_error FROM messages WHERE delivered_at IS NULL AND last_error IS NOT NULL "
                "ORDER BY due_at DESC LIMIT 1"
            ).fetchone()
            unprocessed = conn.execute("SELECT COUNT(*) FROM webhooks WHERE processed_at IS NULL").fetchone()[0]
            lag = conn.execute(
                f"SELECT {_NOW} - received_at FROM webhooks WHERE processed_at IS NULL ORDER BY id LIMIT 1"
            ).fetchone()
            unmapped = dict(
                conn.execute(
                    "SELECT unmapped_event, COUNT(*) AS n FROM webhooks WHERE unmapped_event IS NOT NULL "
                    "GROUP BY unmapped_event ORDER BY n DESC, unmapped_event LIMIT %s",
                    (UNMAPPED_SHOWN,),
                ).fetchall()
            )
            held, held_events = conn.execute(
                "SELECT COUNT(*), COUNT(DISTINCT unmapped_event) FROM webhooks WHERE unmapped_event IS NOT NULL"
            ).fetchone()
            waiting = conn.execute(
                "SELECT COUNT(*) FROM webhooks WHERE processed_at IS NULL AND lease_owner = %s", (WAITING_FOR_API,)
            ).fetchone()[0]
            return OutboxStats(
                pending, due, delivered, dead, None if oldest_age is None else max(oldest_age, 0.0),
                last[0] if last else None, unprocessed, None if lag is None else max(lag[0], 0.0), unmapped,
                waiting, held, held_events,
                newest_dead_letter_age=None if newest_dead is None else max(newest_dead, 0.0),
                newest_webhook_age=None if newest_webhook is None else max(newest_webhook[0], 0.0),
            )  # fmt: skip

        return self._write(work)

    def next_due(self) -> float | None:
        """When the next message is due, in this process's clock (the delivery loop sleeps until then)."""
        row = self._write(
            lambda conn: conn.execute(
                f"SELECT MIN(due_at) - {_NOW} FROM messages WHERE delivered_at IS NULL"
            ).fetchone()
        )
        return None if row[0] is None else time.time() + row[0]

    def dead_letters(self, include_replayed: bool = False, ids: Sequence[int] | None = None) -> list[DeadLetter]:
        query = f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters"
        clauses: list[str] = []
        params: list[Any] = []
        if not include_replayed:
            clauses.append("replayed_at IS NULL")
        if ids:
            clauses.append("id = ANY(%s)")
            params.append(list(ids))
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        rows = self._write(lambda conn: conn.execute(query + " ORDER BY id", params).fetchall())
        return [_dead_letter(row) for row in rows]

    def message_bodies(self) -> list[bytes]:
        rows = self._write(lambda conn: conn.execute("SELECT body FROM messages ORDER BY id").fetchall())
        return [bytes(r[0]) for r in rows]

    # -- console reads ---------------------------------------------------------------------------------------
    # For the web console (engine.console), on a read-only outbox of its own; see engine.outbox (the same queries:
    # primary key, unique keys, the partial index on delivered messages).

    def recent_webhooks(self, limit: int, before: int | None = None) -> list[WebhookSummary]:
        rows = self._write(
            lambda conn: conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM webhooks WHERE id < %s ORDER BY id DESC LIMIT %s",
                (before if before is not None else _NO_ID, limit),
            ).fetchall()
        )
        return [WebhookSummary(*row) for row in rows]

    def webhook_body(self, webhook_id: int) -> tuple[WebhookSummary, bytes] | None:
        row = self._write(
            lambda conn: conn.execute(
                f"SELECT {_SUMMARY_COLUMNS}, body FROM webhooks WHERE id = %s", (webhook_id,)
            ).fetchone()
        )
        return None if row is None else (WebhookSummary(*row[:6]), bytes(row[6]))

    def webhook_ids(self, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        rows = self._write(
            lambda conn: conn.execute("SELECT key, id FROM webhooks WHERE key = ANY(%s)", (list(keys),)).fetchall()
        )
        return dict(rows)

    def message_counts(
        self, keys: Sequence[str], since: float, scan_limit: int
    ) -> tuple[dict[str, tuple[int, int]], bool]:
        if not keys:
            return {}, True

        def work(conn: psycopg.Connection) -> tuple[dict[str, tuple[int, int]], bool]:
            first = _first_id(conn, "messages", "created_at", since - CONSOLE_SLACK_SECONDS)
            last = conn.execute("SELECT MAX(id) FROM messages").fetchone()[0] or 0
            complete = last - first < scan_limit
            rows = conn.execute(
                "SELECT webhook_key, COUNT(*), COUNT(delivered_at) FROM messages WHERE id >= %s "
                "AND webhook_key = ANY(%s) GROUP BY webhook_key",
                (first if complete else last - scan_limit + 1, list(keys)),
            ).fetchall()
            return {key: (count, delivered) for key, count, delivered in rows}, complete

        return self._write(work)

    def messages_of(self, key: str, moments: Sequence[float], slack: float) -> list[StoredMessage]:
        def work(conn: psycopg.Connection) -> list[StoredMessage]:
            found: dict[int, StoredMessage] = {}
            for moment in moments:
                low = _first_id(conn, "messages", "created_at", moment - slack)
                high = _first_id(conn, "messages", "created_at", moment + slack, strictly_after=True)
                rows = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id >= %s AND id < %s AND webhook_key = %s",
                    (low, high, key),
                ).fetchall()
                found.update((row[0], StoredMessage(*row[:3], bytes(row[3]), *row[4:])) for row in rows)
            return [found[i] for i in sorted(found)]

        return self._write(work)

    def activity(self, start: float, minutes: int) -> Activity:
        edges = [start + 60 * m for m in range(minutes + 1)]

        def work(conn: psycopg.Connection) -> Activity:
            received, exact_received = _per_minute(conn, "received_at", edges)
            processed, exact_processed = _per_minute(conn, "processed_at", edges)
            delivered = [
                conn.execute(
                    "SELECT COUNT(*) FROM messages WHERE delivered_at >= %s AND delivered_at < %s", (low, high)
                ).fetchone()[0]
                for low, high in itertools.pairwise(edges)
            ]
            return Activity(start, received, processed, delivered, not (exact_received and exact_processed))

        return self._write(work)

    def recent_dead_letters(self, limit: int, before: int | None = None) -> list[DeadLetter]:
        rows = self._write(
            lambda conn: conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id < %s AND replayed_at IS NULL "
                "ORDER BY id DESC LIMIT %s",
                (before if before is not None else _NO_ID, limit),
            ).fetchall()
        )
        return [_dead_letter(row) for row in rows]

    def dead_letters_since(self, since: float, limit: int) -> list[DeadLetter]:
        def work(conn: psycopg.Connection) -> list[DeadLetter]:
            first = _first_id(conn, "dead_letters", "created_at", since - CONSOLE_SLACK_SECONDS)
            return conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id >= %s AND created_at >= %s "
                "ORDER BY id LIMIT %s",
                (first, since, limit),
            ).fetchall()

        return [_dead_letter(row) for row in self._write(work)]

    def find_webhooks(self, found: WebhookFilter, limit: int, before: int | None = None) -> FoundWebhooks:
        return self._write(lambda conn: find_webhooks(conn, found, limit, before, _FIND_COLUMNS))

    # -- end of console reads ------------------------------------------------------------------------------

    # -- backfill progress ---------------------------------------------------------------------------------

    def backfill_start(self, resource: str, since: int, until: int) -> tuple[int, str | None]:
        def work(conn: psycopg.Connection) -> tuple[int, str | None]:
            row = conn.execute(
                "SELECT done_until, finished_at, state FROM backfills "
                "WHERE resource = %s AND since = %s AND until = %s FOR UPDATE",
                (resource, since, until),
            ).fetchone()
            if row is not None and row[1] is None:
                return row[0], row[2]
            conn.execute(
                "INSERT INTO backfills (resource, since, until, done_until, updated_at) "
                f"VALUES (%s, %s, %s, %s, {_NOW}) ON CONFLICT (resource, since, until) DO UPDATE SET "
                "done_until = excluded.done_until, fetched = 0, queued = 0, finished_at = NULL, state = NULL, "
                "updated_at = excluded.updated_at",
                (resource, since, until, since),
            )
            return since, None

        return self._write(work)

    def backfill_save(
        self, resource: str, since: int, until: int, state: str, done_until: int, fetched: int, queued: int
    ) -> None:
        self._write(
            lambda conn: conn.execute(
                "UPDATE backfills SET state = %s, done_until = %s, fetched = %s, queued = %s, "
                f"updated_at = {_NOW} WHERE resource = %s AND since = %s AND until = %s",
                (state, done_until, fetched, queued, resource, since, until),
            )
        )

    def backfill_unfinished_until(self, resource: str, since: int) -> int | None:
        row = self._write(
            lambda conn: conn.execute(
                "SELECT until FROM backfills WHERE resource = %s AND since = %s AND finished_at IS NULL "
                "ORDER BY updated_at DESC LIMIT 1",
                (resource, since),
            ).fetchone()
        )
        return None if row is None else row[0]

    def backfill_finished(self, resource: str, since: int, until: int) -> None:
        self._write(
            lambda conn: conn.execute(
                f"UPDATE backfills SET finished_at = {_NOW}, updated_at = {_NOW} "
                "WHERE resource = %s AND since = %s AND until = %s",
                (resource, since, until),
            )
        )


# -- console reads: helpers ------------------------------------------------------------------------------------

_SUMMARY_COLUMNS = "id, key, event, received_at, processed_at, unmapped_event IS NOT NULL"
_MESSAGE_COLUMNS = "id, message_id, event, body, created_at, attempts, last_error, delivered_at"
_NO_ID = 2**63 - 1
_FIND_COLUMNS = WebhookColumns(
    mark="%s",
    tables="webhooks",
    summary=_SUMMARY_COLUMNS,
    id="id",
    event="event",
    received="received_at",
    processed="processed_at",
    unmapped="unmapped_event",
    body="body",
    body_contains="position(convert_to(%s, 'UTF8') in body) > 0",  # a quick test before the JSON is parsed
    # json, not jsonb: jsonb refuses a \u0000 that JSON (and a webhook) may hold
    body_field="(convert_from(body, 'UTF8')::json #>> %s::text[])",
    call_id_path="{data,id}",
    related_call_path="{data,call_id}",
)


# The shared helpers (engine.outbox.base) in PostgreSQL's dialect.
_first_id = functools.partial(first_id, mark="%s")
_per_minute = functools.partial(per_minute, mark="%s", minute="floor(({column} - %s) / 60)::int")


# -- end of console reads: helpers ------------------------------------------------------------------------------


def _hint(exc: psycopg.Error) -> str:
    if isinstance(exc, psycopg.errors.InsufficientPrivilege):
        return (
            " (the role in ENGINE_DB needs to own the database, or CREATE on its schema for `engine serve` and "
            "`engine backfill`, and SELECT, INSERT, UPDATE, DELETE on the outbox's tables)"
        )
    return ""


def _why_no_connection(url: str, timeout: float) -> str | None:
    """libpq's own reason (no such database or role, unknown host, refused, bad sslmode...), which the pool keeps
    to its log and replaces with "pool initialization incomplete after 3.0 sec"; None if a connection opens."""
    try:
        psycopg.connect(url, autocommit=True, connect_timeout=max(1, int(timeout))).close()
    except psycopg.Error as exc:
        # Its lines: the failure, then libpq's hint ("Is the server running on that host...?"), one line here.
        return " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip()) or None
    return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
