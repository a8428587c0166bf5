"""The outbox: Segment messages committed durably before Aircall gets its 200, until Segment has them.

The store is synchronous and owns one SQLite connection; `engine.outbox.committer` runs it on a thread of its own
for the server (group commit), the CLI uses it directly. The interface (enqueue, claim, ack, retry, dead,
stats, prune) is what a PostgreSQL outbox for several replicas has to provide too.

A message row is pending until acknowledged. Claiming a batch moves its rows' `due_at` past a lease, so that
no other worker (another `--workers` process) takes them meanwhile, and a worker that dies mid-batch lets
them become due again when the lease runs out. One partial index on `due_at` over pending rows serves every
claim, however many delivered rows wait for pruning.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from engine.outbox.base import (
    ALL_SESSIONS,
    CONSOLE_SESSION_SECONDS,
    CONSOLE_SLACK_SECONDS,
    DEAD_LETTER_COLUMNS,
    UNMAPPED_SHOWN,
    WAITING_FOR_API,
    Activity,
    Claimed,
    DeadLetter,
    FoundWebhooks,
    NewMessage,
    OutboxRefused,
    OutboxStats,
    OutboxUnavailable,
    PendingWebhook,
    Processed,
    StoredMessage,
    StoredWebhook,
    WebhookColumns,
    WebhookFilter,
    WebhookSummary,
    find_webhooks,
    first_id,
    per_minute,
)

SCHEMA_VERSION = 7
_MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE webhooks (
        id          INTEGER PRIMARY KEY,      -- a rowid table: rows of kilobytes insert faster than WITHOUT ROWID
        key         TEXT NOT NULL UNIQUE,     -- deterministic: a redelivered webhook is the same row
        event       TEXT NOT NULL,
        received_at REAL NOT NULL,
        body        BLOB NOT NULL             -- the envelope without its token, for replay
    );
    CREATE TABLE messages (
        id           INTEGER PRIMARY KEY,
        message_id   TEXT NOT NULL UNIQUE,    -- Segment's messageId: the idempotency key
        webhook_key  TEXT NOT NULL,
        event        TEXT NOT NULL,
        body         BLOB NOT NULL,           -- the message as sent, compact JSON
        size         INTEGER NOT NULL,
        created_at   REAL NOT NULL,
        due_at       REAL NOT NULL,           -- next attempt, or the end of a claim's lease
        attempts     INTEGER NOT NULL DEFAULT 0,
        lease_owner  TEXT,
        last_error   TEXT,
        delivered_at REAL                     -- null while pending
    );
    CREATE INDEX messages_pending ON messages (due_at) WHERE delivered_at IS NULL;
    CREATE INDEX messages_delivered ON messages (delivered_at) WHERE delivered_at IS NOT NULL;
    CREATE TABLE dead_letters (
        id          INTEGER PRIMARY KEY,
        message_id  TEXT,                     -- null when the webhook itself could not be mapped
        event       TEXT NOT NULL,
        body        BLOB,                     -- the message, when there was one
        webhook     BLOB NOT NULL,            -- the envelope without its token: replay re-renders it
        reason      TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        created_at  REAL NOT NULL,
        replayed_at REAL
    );
    """,
    2: """
    CREATE TABLE backfills (
        resource    TEXT NOT NULL,            -- calls, users, contacts, numbers
        since       INTEGER NOT NULL,         -- the range asked for, unix seconds
        until       INTEGER NOT NULL,
        done_until  INTEGER NOT NULL,         -- every window before this is queued
        fetched     INTEGER NOT NULL DEFAULT 0,
        queued      INTEGER NOT NULL DEFAULT 0,
        finished_at REAL,                     -- null while a run of this range is unfinished
        updated_at  REAL NOT NULL,
        PRIMARY KEY (resource, since, until)
    );
    """,
    # The gateway stores the raw webhook and answers; processing maps it afterwards. Webhooks stored before this
    # version were mapped on arrival, so they count as processed.
    3: """
    -- null until its messages (or its dead letter) are committed
    ALTER TABLE webhooks ADD COLUMN processed_at REAL;
    -- a processing worker's claim, as for messages: another worker takes the webhook once the lease is over
    ALTER TABLE webhooks ADD COLUMN lease_until REAL NOT NULL DEFAULT 0;
    ALTER TABLE webhooks ADD COLUMN lease_owner TEXT;
    UPDATE webhooks SET processed_at = received_at;
    CREATE INDEX webhooks_unprocessed ON webhooks (id) WHERE processed_at IS NULL;
    """,
    4: """
    -- where an unfinished run stands, to the page: engine.aircall.backfill's own text
    ALTER TABLE backfills ADD COLUMN state TEXT;
    """,
    # A webhook's processing state moves out of its row. Claiming and finishing a webhook rewrote the whole row,
    # body included: a page of the log per webhook, twice, which processing wrote and a checkpoint copied again
    # (27 - 30 against 6 us of CPU a webhook, bench/RESULTS.md). The state rows are a few bytes each. The
    # trigger fills them from the gateway's INSERT, so that an append stays one statement (engine.outbox.sqlite's
    # append says why that matters). webhooks.processed_at, lease_until and lease_owner are not read after this
    # version, and processed_at is only what a row was inserted with: dropping them would rewrite every stored
    # webhook.
    5: """
    CREATE TABLE webhook_state (
        id           INTEGER PRIMARY KEY,     -- webhooks.id
        processed_at REAL,                    -- null until its messages (or its dead letter) are committed
        lease_until  REAL NOT NULL DEFAULT 0, -- a processing worker's claim, as for messages
        lease_owner  TEXT
    );
    INSERT INTO webhook_state (id, processed_at, lease_until, lease_owner)
        SELECT id, processed_at, lease_until, lease_owner FROM webhooks;
    DROP INDEX webhooks_unprocessed;
    CREATE INDEX webhook_state_unprocessed ON webhook_state (id) WHERE processed_at IS NULL;
    CREATE TRIGGER webhook_state_insert AFTER INSERT ON webhooks BEGIN
        INSERT INTO webhook_state (id, processed_at) VALUES (NEW.id, NEW.processed_at);
    END;
    CREATE TRIGGER webhook_state_delete AFTER DELETE ON webhooks BEGIN
        DELETE FROM webhook_state WHERE id = OLD.id;
    END;
    """,
    # A webhook whose event no mapping maps is held, not dropped nor a dead letter: processed, with its event
    # here, until a mapping for it is loaded (release_unmapped). Adding a column rewrites no row.
    6: """
    ALTER TABLE webhook_state ADD COLUMN unmapped_event TEXT;
    CREATE INDEX webhook_state_unmapped ON webhook_state (unmapped_event) WHERE unmapped_event IS NOT NULL;
    """,
    # Console sessions ended by signing out (engine.console.auth): the cookie is signed, not stored, so ending
    # one needs a note that every process (--workers N) reads. Rows live as long as a session could.
    7: """
    CREATE TABLE console_signouts (
        session TEXT PRIMARY KEY,             -- a digest of the session's CSRF token, or '*' for all of them
        at      REAL NOT NULL
    ) WITHOUT ROWID;
    """,
}


class SqliteOutbox:
    """The outbox in one SQLite file, WAL mode, full fsync on commit. Not thread-safe: one thread uses it."""

    def __init__(
        self, path: Path, *, create: bool = True, read_only: bool = False, synced: bool = True, migrate: bool = True
    ) -> None:
        self.path = Path(path)
        self.synced = synced
        self.read_only = read_only
        self.migrate = migrate and not read_only
        self.create = create and not read_only
        if self.path.is_dir():  # SQLite would say only "disk I/O error"
            raise OutboxRefused(
                f"{self.path} is a folder: name a file, such as {self.path / 'outbox.sqlite3'} (created if missing)"
            )
        if self.create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        elif not self.path.exists():
            raise FileNotFoundError(f"no outbox at {self.path}")
        self._conn: sqlite3.Connection | None = None
        self._connect()

    # -- connection ----------------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:  # SQLite itself refuses any write on this connection
            target, uri = f"{self.path.resolve().as_uri()}?mode=ro", True
        else:
            target, uri = str(self.path), False
        conn = sqlite3.connect(
            target, uri=uri, isolation_level=None, check_same_thread=False, timeout=3.0,
            cached_statements=ROWS_PER_INSERT + 64,
        )  # fmt: skip
        try:
            conn.execute("PRAGMA busy_timeout=3000")  # a webhook waits at most this long on a lock
            # Before anything is written: a file of another application is left as it was found.
            self._check_is_outbox(conn)
            if not self.read_only:
                _use_wal(conn)
                # FULL: a commit is on disk before Aircall hears 200, even across a power cut. Group commit
                # pays for the fsync once per batch of webhooks.
                conn.execute("PRAGMA synchronous=FULL" if self.synced else "PRAGMA synchronous=NORMAL")
                self._migrate(conn)
                # Writes wait for the lock in _begin_immediate, in steps of a fraction of a millisecond. SQLite's
                # own busy handler sleeps 1, 2, 5, 10, 15, 20 ms...: a lock held for 2 ms by the processing
                # process would cost a webhook 8 ms, and every webhook of that group commit with it.
                conn.execute("PRAGMA busy_timeout=0")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if "not a database" in str(exc):
                raise OutboxRefused(f"{self.path} is not an aircall-segment outbox: {exc}") from None
            raise
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _check_is_outbox(self, conn: sqlite3.Connection) -> None:
        """OutboxRefused unless the file is this engine's outbox, or (when creating) an empty new file."""
        conn.execute("BEGIN")  # one snapshot: another worker may be creating the tables of a new file meanwhile
        try:
            version = self._schema_version(conn)
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.execute("COMMIT")
        if version == 0 and tables:
            listed = ", ".join(sorted(tables))
            raise OutboxRefused(f"{self.path} is not an aircall-segment outbox: it holds other tables ({listed})")
        if version == 0 and not self.create:
            raise OutboxRefused(f"{self.path} is not an aircall-segment outbox: it has no outbox tables")
        if version > 0 and not {"webhooks", "messages", "dead_letters"} <= tables:
            raise OutboxRefused(f"{self.path} is not an aircall-segment outbox: its outbox tables are missing")
        if not self.migrate and 0 < version < SCHEMA_VERSION:  # engine serve migrates (see open_outbox)
            raise OutboxRefused(
                f"{self.path} has outbox schema {version}, older than this engine's {SCHEMA_VERSION}: start the "
                "server once (it migrates the outbox), then ask again"
            )

    @property
    def conn(self) -> sqlite3.Connection:
        return self._conn if self._conn is not None else self._connect()

    def _migrate(self, conn: sqlite3.Connection) -> None:
        if self._schema_version(conn) == SCHEMA_VERSION:
            return
        # The version is read again under the write lock: with --workers N, several processes open a new file
        # at once, and all but the first must find the work done rather than create the tables again.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for target in range(self._schema_version(conn) + 1, SCHEMA_VERSION + 1):
                for statement in _statements(_MIGRATIONS[target]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _schema_version(self, conn: sqlite3.Connection) -> int:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise OutboxRefused(
                f"{self.path} has outbox schema {version}, newer than this engine's {SCHEMA_VERSION}: "
                "upgrade aircall-segment"
            )
        return version

    def _write(self, work):  # type: ignore[no-untyped-def]
        """Run `work(conn)` in one IMMEDIATE transaction; storage failures become OutboxUnavailable."""
        with self._unavailable_on_failure():
            conn = self.conn
            _begin_immediate(conn)
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

    @contextlib.contextmanager
    def _unavailable_on_failure(self) -> Iterator[None]:
        """Disk full, read-only file, I/O error, lock held too long: OutboxUnavailable, and the next write starts
        on a new connection."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            self._reset()
            raise OutboxUnavailable(str(exc)) from exc

    def _reset(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._reset()

    # -- writes ----------------------------------------------------------------------------------------------

    def append(self, webhooks: Sequence[StoredWebhook]) -> list[bool]:
        """The gateway's write: raw webhooks, to be mapped later, committed before it returns (group commit), all
        or none. Returns, per webhook, whether it was new: a redelivered webhook is stored once.

        The group is one INSERT in a transaction of its own, so SQLite's write lock is taken and released inside
        one call into SQLite. As BEGIN, INSERT, COMMIT the lock would also be held while this thread waits for
        the GIL between the calls, which a busy event loop makes last milliseconds: that was the longest wait
        of the processing process's writes, and of the gateway's behind them. A group of more than
        ROWS_PER_INSERT webhooks (or more than a SQLite before 3.32 takes parameters for) goes in several
        INSERTs, in one transaction.
        """
        with self._unavailable_on_failure():
            rows = min(ROWS_PER_INSERT, self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // 4)
            if len(webhooks) <= rows:
                return self._insert_webhooks(self.conn, webhooks, _retry_while_locked)

        def work(conn: sqlite3.Connection) -> list[bool]:
            added: list[bool] = []
            for first in range(0, len(webhooks), rows):
                added += self._insert_webhooks(conn, webhooks[first : first + rows], _execute)
            return added

        return self._write(work)

    @staticmethod
    def _insert_webhooks(
        conn: sqlite3.Connection, webhooks: Sequence[StoredWebhook], execute: Callable[..., sqlite3.Cursor]
    ) -> list[bool]:
        now = time.time()
        cursor = execute(
            conn, _insert_webhooks_sql(len(webhooks)), [v for w in webhooks for v in (w.key, w.event, now, w.body)]
        )
        inserted, last = cursor.rowcount, cursor.lastrowid
        if inserted == len(webhooks):
            return [True] * inserted
        # Rowids are taken one after the other from the largest: the new rows are the `inserted` last ones.
        new_keys = set()
        if inserted and last is not None:
            new_keys = {row[0] for row in conn.execute("SELECT key FROM webhooks WHERE id > ?", (last - inserted,))}
        added = []
        for webhook in webhooks:  # the same webhook twice in one group: the first one is new
            added.append(webhook.key in new_keys)
            new_keys.discard(webhook.key)
        return added

    def claim_webhooks(self, limit: int, lease_seconds: float, owner: str) -> list[PendingWebhook]:
        """The oldest webhooks waiting to be mapped that no other worker holds, leased to `owner`. A worker's own
        earlier claims are among them: a batch whose commit failed is taken again at once, not after its lease."""
        now = time.time()

        def work(conn: sqlite3.Connection) -> list[PendingWebhook]:
            ids = conn.execute(
                "UPDATE webhook_state SET lease_until = ?, lease_owner = ? WHERE id IN ("
                "  SELECT id FROM webhook_state WHERE processed_at IS NULL AND (lease_until <= ? OR lease_owner = ?)"
                "  ORDER BY id LIMIT ?"
                ") RETURNING id",
                (now + lease_seconds, owner, now, owner, limit),
            ).fetchall()
            if not ids:
                return []
            rows = conn.execute(
                "SELECT id, key, event, body, received_at FROM webhooks "
                "WHERE id IN (SELECT value FROM json_each(?)) ORDER BY id",
                (json.dumps([row[0] for row in ids]),),
            )
            return [PendingWebhook(*row) for row in rows]

        return self._write(work)

    def commit_processed(self, batch: Sequence[Processed]) -> list[int]:
        """Each webhook's messages (idempotent on messageId) or its dead letter, and the webhook marked processed,
        in one transaction. Returns, per webhook, how many messages were new.

        A claimed webhook found already processed (its lease ran out and another worker finished it first) adds
        nothing: its messages would have the same ids, but its dead letter would be a second one.
        """
        # TODO(issue 12): this transaction takes SQLite's one write lock from the gateway's appends, for as long as
        # a batch's messages take to insert (schema 5 took the webhooks' own rows out of it). The next step, once
        # prototyped (bench/RESULTS.md, "The pipeline in stages"; the branch is gone): messages and dead letters
        # in a second file ATTACHed by every connection, committed before the processed mark; +6 to +13 % with
        # processing running, end to end unchanged. It needs a migration of existing outboxes, a guard against a
        # second dead letter for one webhook, and backups that copy both files as one.
        now = time.time()

        def work(conn: sqlite3.Connection) -> list[int]:
            added = []
            for item in batch:
                webhook = item.webhook
                if item.waiting_until is not None:  # not processed: taken again once the lease ends
                    if item.id is not None:
                        conn.execute(
                            "UPDATE webhook_state SET lease_until = ?, lease_owner = ? "
                            "WHERE id = ? AND processed_at IS NULL",
                            (item.waiting_until, WAITING_FOR_API, item.id),
                        )
                    added.append(0)
                    continue
                held = webhook.event if item.held else None
                if item.id is not None:
                    marked = conn.execute(
                        "UPDATE webhook_state SET processed_at = ?, lease_owner = NULL, unmapped_event = ? "
                        "WHERE id = ? AND processed_at IS NULL",
                        (now, held, item.id),
                    ).rowcount
                    if not marked:
                        added.append(0)
                        continue
                else:
                    conn.execute(  # its state row, processed, by the trigger
                        "INSERT INTO webhooks (key, event, received_at, body, processed_at) VALUES (?, ?, ?, ?, ?) "
                        "ON CONFLICT (key) DO NOTHING",
                        (webhook.key, webhook.event, now, webhook.body, now),
                    )
                    if held is not None:
                        conn.execute(
                            "UPDATE webhook_state SET unmapped_event = ? "
                            "WHERE id = (SELECT id FROM webhooks WHERE key = ?)",
                            (held, webhook.key),
                        )
                if held is not None:
                    added.append(0)
                    continue
                if item.dead_reason is not None:
                    conn.execute(
                        "INSERT INTO dead_letters (message_id, event, body, webhook, reason, created_at) "
                        "VALUES (NULL, ?, NULL, ?, ?, ?)",
                        (webhook.event, webhook.body, item.dead_reason[:2000], now),
                    )
                    added.append(0)
                    continue
                before = conn.total_changes
                conn.executemany(
                    "INSERT INTO messages (message_id, webhook_key, event, body, size, created_at, due_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
                    [(m.message_id, webhook.key, m.event, m.body, len(m.body), now, now) for m in item.messages],
                )
                added.append(conn.total_changes - before)
            return added

        return self._write(work)

    def enqueue(self, batch: Sequence[tuple[StoredWebhook, Sequence[NewMessage]]]) -> list[int]:
        """Webhooks mapped already (backfill, replay), with their messages: commit_processed without a claim."""
        return self.commit_processed([Processed(webhook, messages) for webhook, messages in batch])

    def keep_webhook(self, webhook: StoredWebhook, reason: str) -> None:
        """A webhook that could not be mapped: kept whole, with the reason, for replay after a fix."""
        self.commit_processed([Processed(webhook, dead_reason=reason)])

    def release_unmapped(self, events: Iterable[str]) -> int:
        wanted = set(events)

        def work(conn: sqlite3.Connection) -> int:
            held = [
                row[0]
                for row in conn.execute(
                    "SELECT DISTINCT unmapped_event FROM webhook_state WHERE unmapped_event IS NOT NULL"
                )
            ]
            release = sorted(wanted.intersection(held))
            if not release:
                return 0
            return conn.execute(
                "UPDATE webhook_state SET processed_at = NULL, lease_until = 0, lease_owner = NULL, "
                "unmapped_event = NULL WHERE unmapped_event IN (SELECT value FROM json_each(?))",
                (json.dumps(release),),
            ).rowcount

        return self._write(work)

    def claim(self, limit: int, lease_seconds: float, owner: str) -> list[Claimed]:
        """The messages due first that no other worker holds, leased to `owner`.

        The lease is one UPDATE in a transaction of its own and the leased rows are read after it, as for
        `append`: with RETURNING, the write lock stayed held while this thread took the GIL back for each of
        some 350 rows, and the gateway's appends waited behind it."""
        lease = time.time() + lease_seconds
        with self._unavailable_on_failure():
            _retry_while_locked(
                self.conn,
                "UPDATE messages SET due_at = ?, lease_owner = ? WHERE id IN ("
                "  SELECT id FROM messages WHERE delivered_at IS NULL AND due_at <= ? ORDER BY due_at LIMIT ?)",
                (lease, owner, lease - lease_seconds, limit),
            )
            rows = self.conn.execute(  # the lease's own due_at: rows of an earlier claim of this owner have another
                "SELECT id, message_id, body, attempts, created_at FROM messages "
                "WHERE delivered_at IS NULL AND due_at = ? AND lease_owner = ? ORDER BY id",
                (lease, owner),
            ).fetchall()
        return [Claimed(*row) for row in rows]

    def ack(self, ids: Iterable[int]) -> None:
        """Messages Segment has: one UPDATE in a transaction of its own per batch (see `claim`). A batch acked in
        part before a failure is sent again in part; Segment drops what it has by messageId."""
        now = time.time()
        ids = list(ids)
        with self._unavailable_on_failure():
            per_statement = self.conn.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) - 1
            for first in range(0, len(ids), per_statement):
                chunk = ids[first : first + per_statement]
                _retry_while_locked(
                    self.conn,
                    "UPDATE messages SET delivered_at = ?, lease_owner = NULL, last_error = NULL, "
                    f"attempts = attempts + 1 WHERE id IN ({','.join('?' * len(chunk))})",
                    (now, *chunk),
                )

    def retry(self, ids: Iterable[int], delay: float, error: str | None, owner: str, attempted: bool = True) -> None:
        """Make claimed messages due again after `delay`; `attempted=False` for those never sent (postponed)."""
        due = time.time() + delay
        ids = list(ids)
        self._write(
            lambda conn: conn.executemany(
                "UPDATE messages SET due_at = ?, attempts = attempts + ?, last_error = COALESCE(?, last_error), "
                "lease_owner = NULL "
                "WHERE id = ? AND delivered_at IS NULL AND (lease_owner = ? OR lease_owner IS NULL)",
                [(due, int(attempted), error[:1000] if error else None, i, owner) for i in ids],
            )
        )

    def dead(self, ids: Iterable[int], reason: str) -> None:
        """Move messages that Segment will never accept (or that are too old) to the dead letters."""
        now = time.time()
        ids = list(ids)

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO dead_letters (message_id, event, body, webhook, reason, attempts, created_at) "
                "SELECT m.message_id, m.event, m.body, w.body, ?, m.attempts + 1, ? "
                "FROM messages m JOIN webhooks w ON w.key = m.webhook_key "
                "WHERE m.id = ? AND m.delivered_at IS NULL",
                [(reason[:2000], now, i) for i in ids],
            )
            conn.executemany("DELETE FROM messages WHERE id = ? AND delivered_at IS NULL", [(i,) for i in ids])

        self._write(work)

    def release(self, owner: str) -> None:
        """A worker stopping cleanly hands its claims back at once instead of waiting for the lease."""
        now = time.time()

        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE messages SET due_at = ?, lease_owner = NULL WHERE lease_owner = ? AND delivered_at IS NULL "
                "AND due_at > ?",
                (now, owner, now),
            )
            conn.execute(
                "UPDATE webhook_state SET lease_until = 0, lease_owner = NULL "
                "WHERE lease_owner = ? AND processed_at IS NULL",
                (owner,),
            )

        self._write(work)

    def prune(self, older_than_seconds: float) -> int:
        """Delete delivered messages past the retention, dead letters replayed as long ago, and webhooks nothing
        refers to any more."""
        cutoff = time.time() - older_than_seconds

        def work(conn: sqlite3.Connection) -> int:
            deleted = conn.execute(
                "DELETE FROM messages WHERE delivered_at IS NOT NULL AND delivered_at < ?", (cutoff,)
            ).rowcount
            conn.execute("DELETE FROM dead_letters WHERE replayed_at IS NOT NULL AND replayed_at < ?", (cutoff,))
            conn.execute("DELETE FROM console_signouts WHERE at < ?", (time.time() - CONSOLE_SESSION_SECONDS,))
            # NOT IN a list made once: SQLite reads the messages into a temporary index once. As a correlated
            # NOT EXISTS (messages.webhook_key has no index) it read them again for each webhook: 17 s for 20,000
            # webhooks and 200,000 messages, against 0.25 s, on the commit thread the gateway waits for.
            conn.execute(
                "DELETE FROM webhooks WHERE received_at < ? "
                "AND (SELECT processed_at FROM webhook_state s WHERE s.id = webhooks.id) IS NOT NULL "
                "AND key NOT IN (SELECT webhook_key FROM messages)",
                (cutoff,),
            )
            return deleted

        return self._write(work)

    # -- reads -------------------------------------------------------------------------------------------

    def stats(self) -> OutboxStats:
        conn = self.conn
        now = time.time()
        pending, due, oldest = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(due_at <= ?), 0), MIN(created_at) FROM messages WHERE delivered_at IS NULL",
            (now,),
        ).fetchone()
        delivered = conn.execute("SELECT COUNT(*) FROM messages WHERE delivered_at IS NOT NULL").fetchone()[0]
        # The count reads every dead letter anyway: the newest's time comes with it.
        dead, newest_dead = conn.execute(
            "SELECT COUNT(*), MAX(created_at) FROM dead_letters WHERE replayed_at IS NULL"
        ).fetchone()
        newest_webhook = conn.execute("SELECT received_at FROM webhooks ORDER BY id DESC LIMIT 1").fetchone()
        last_error = conn.execute(
            "SELECT last_error FROM messages WHERE delivered_at IS NULL AND last_error IS NOT NULL "
            "ORDER BY due_at DESC LIMIT 1"
        ).fetchone()
        unprocessed = conn.execute("SELECT COUNT(*) FROM webhook_state WHERE processed_at IS NULL").fetchone()[0]
        first = conn.execute(
            "SELECT received_at FROM webhooks "
            "WHERE id = (SELECT id FROM webhook_state WHERE processed_at IS NULL ORDER BY id LIMIT 1)"
        ).fetchone()
        unmapped = dict(
            conn.execute(
                "SELECT unmapped_event, COUNT(*) AS n FROM webhook_state WHERE unmapped_event IS NOT NULL "
                "GROUP BY unmapped_event ORDER BY n DESC, unmapped_event LIMIT ?",
                (UNMAPPED_SHOWN,),
            ).fetchall()
        )
        held, held_events = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT unmapped_event) FROM webhook_state WHERE unmapped_event IS NOT NULL"
        ).fetchone()
        waiting = conn.execute(
            "SELECT COUNT(*) FROM webhook_state WHERE processed_at IS NULL AND lease_owner = ?", (WAITING_FOR_API,)
        ).fetchone()[0]
        return OutboxStats(
            unprocessed=unprocessed,
            oldest_unprocessed_age=None if first is None else max(now - first[0], 0.0),
            unmapped=unmapped,
            waiting_for_api=waiting,
            unmapped_total=held,
            unmapped_events=held_events,
            pending=pending,
            due=due,
            delivered=delivered,
            dead_letters=dead,
            oldest_pending_age=None if oldest is None else max(now - oldest, 0.0),
            last_error=last_error[0] if last_error else None,
            newest_dead_letter_age=None if newest_dead is None else max(now - newest_dead, 0.0),
            newest_webhook_age=None if newest_webhook is None else max(now - newest_webhook[0], 0.0),
        )

    def next_due(self) -> float | None:
        row = self.conn.execute("SELECT MIN(due_at) FROM messages WHERE delivered_at IS NULL").fetchone()
        return row[0]

    def dead_letters(self, include_replayed: bool = False, ids: Sequence[int] | None = None) -> list[DeadLetter]:
        query = f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters"
        clauses, params = [], []
        if not include_replayed:
            clauses.append("replayed_at IS NULL")
        if ids:
            clauses.append(f"id IN ({','.join('?' * len(ids))})")
            params.extend(ids)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        return [DeadLetter(*row) for row in self.conn.execute(query + " ORDER BY id", params)]

    def mark_replayed(self, ids: Iterable[int]) -> None:
        now = time.time()
        ids = list(ids)
        self._write(
            lambda conn: conn.executemany(
                "UPDATE dead_letters SET replayed_at = ? WHERE id = ?", [(now, i) for i in ids]
            )
        )

    def end_console_session(self, session: str, at: float) -> None:
        self._write(
            lambda conn: conn.execute(
                "INSERT INTO console_signouts (session, at) VALUES (?, ?) "
                "ON CONFLICT (session) DO UPDATE SET at = MAX(at, excluded.at)",
                (session, at),
            )
        )

    def console_session_ended(self, session: str, begun_at: float) -> bool:
        rows = self.conn.execute(
            "SELECT session, at FROM console_signouts WHERE session IN (?, ?)", (session, ALL_SESSIONS)
        ).fetchall()
        return any(key == session or at > begun_at for key, at in rows)

    def discard_dead_letters(self, ids: Sequence[int] | None) -> list[DeadLetter]:
        """Delete dead letters not replayed (these ids, or all of them); returns what was deleted."""

        def work(conn: sqlite3.Connection) -> list[DeadLetter]:
            # SELECT then DELETE in one transaction, not DELETE ... RETURNING: that needs SQLite 3.35.
            where = "replayed_at IS NULL"
            params: list[int] = []
            if ids is not None:
                where += f" AND id IN ({','.join('?' * len(ids))})"
                params.extend(ids)
            rows = conn.execute(f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE {where}", params).fetchall()
            conn.execute(f"DELETE FROM dead_letters WHERE {where}", params)
            return sorted((DeadLetter(*row) for row in rows), key=lambda letter: letter.id)

        return self._write(work)

    def retry_now(self) -> int:
        """Every pending message due at once, skipping what is left of its backoff."""
        now = time.time()
        return self._write(
            lambda conn: (
                conn.execute(
                    "UPDATE messages SET due_at = ? WHERE delivered_at IS NULL AND due_at > ? AND lease_owner IS NULL",
                    (now, now),
                ).rowcount
            )
        )

    # -- backfill progress ---------------------------------------------------------------------------------

    def backfill_start(self, resource: str, since: int, until: int) -> tuple[int, str | None]:
        """Where a backfill of this range starts: the saved state of an unfinished run (with how far it got), or
        (since, None) after recording a fresh start. The state is the backfill's own text; the store keeps it."""
        now = time.time()

        def work(conn: sqlite3.Connection) -> tuple[int, str | None]:
            row = conn.execute(
                "SELECT done_until, finished_at, state FROM backfills WHERE resource = ? AND since = ? AND until = ?",
                (resource, since, until),
            ).fetchone()
            if row is not None and row[1] is None:
                return row[0], row[2]
            conn.execute(
                "INSERT INTO backfills (resource, since, until, done_until, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (resource, since, until) DO UPDATE SET done_until = excluded.done_until, "
                "fetched = 0, queued = 0, finished_at = NULL, state = NULL, updated_at = excluded.updated_at",
                (resource, since, until, since, now),
            )
            return since, None

        return self._write(work)

    def backfill_save(
        self, resource: str, since: int, until: int, state: str, done_until: int, fetched: int, queued: int
    ) -> None:
        """After each page: what the run has done, so that an interrupted run continues at the next page."""
        now = time.time()
        self._write(
            lambda conn: conn.execute(
                "UPDATE backfills SET state = ?, done_until = ?, fetched = ?, queued = ?, updated_at = ? "
                "WHERE resource = ? AND since = ? AND until = ?",
                (state, done_until, fetched, queued, now, resource, since, until),
            )
        )

    def backfill_unfinished_until(self, resource: str, since: int) -> int | None:
        """The end of the latest unfinished run from `since`: a run without --until continues that one."""
        row = self.conn.execute(
            "SELECT until FROM backfills WHERE resource = ? AND since = ? AND finished_at IS NULL "
            "ORDER BY updated_at DESC LIMIT 1",
            (resource, since),
        ).fetchone()
        return None if row is None else row[0]

    def backfill_finished(self, resource: str, since: int, until: int) -> None:
        now = time.time()
        self._write(
            lambda conn: conn.execute(
                "UPDATE backfills SET finished_at = ?, updated_at = ? WHERE resource = ? AND since = ? AND until = ?",
                (now, now, resource, since, until),
            )
        )

    def message_bodies(self) -> list[bytes]:
        """Every message body, delivered or not (tests and inspection)."""
        return [row[0] for row in self.conn.execute("SELECT body FROM messages ORDER BY id")]

    # -- console reads ---------------------------------------------------------------------------------------
    # For the web console (engine.console), on a connection of its own (read_only=True): one snapshot each, no
    # lock the committer waits on. Every query goes through the primary key, a unique key or the partial index
    # on delivered messages (tests/test_console_reads.py checks the query plans).

    def _snapshot(self, work):  # type: ignore[no-untyped-def]
        conn = self.conn
        conn.execute("BEGIN")
        try:
            return work(conn)
        finally:
            conn.execute("COMMIT")

    def recent_webhooks(self, limit: int, before: int | None = None) -> list[WebhookSummary]:
        rows = self.conn.execute(
            f"SELECT {_SUMMARY_COLUMNS} FROM {_SUMMARY_TABLES} WHERE w.id < ? ORDER BY w.id DESC LIMIT ?",
            (before if before is not None else _NO_ID, limit),
        )
        return [WebhookSummary(*row) for row in rows]

    def webhook_body(self, webhook_id: int) -> tuple[WebhookSummary, bytes] | None:
        row = self.conn.execute(
            f"SELECT {_SUMMARY_COLUMNS}, w.body FROM {_SUMMARY_TABLES} WHERE w.id = ?", (webhook_id,)
        ).fetchone()
        return None if row is None else (WebhookSummary(*row[:6]), bytes(row[6]))

    def webhook_ids(self, keys: Sequence[str]) -> dict[str, int]:
        if not keys:
            return {}
        marks = ",".join("?" * len(keys))
        return dict(self.conn.execute(f"SELECT key, id FROM webhooks WHERE key IN ({marks})", list(keys)))

    def message_counts(
        self, keys: Sequence[str], since: float, scan_limit: int
    ) -> tuple[dict[str, tuple[int, int]], bool]:
        if not keys:
            return {}, True

        def work(conn: sqlite3.Connection) -> tuple[dict[str, tuple[int, int]], bool]:
            first = _first_id(conn, "messages", "created_at", since - CONSOLE_SLACK_SECONDS)
            last = conn.execute("SELECT MAX(id) FROM messages").fetchone()[0] or 0
            complete = last - first < scan_limit
            marks = ",".join("?" * len(keys))
            rows = conn.execute(
                f"SELECT webhook_key, COUNT(*), COUNT(delivered_at) FROM messages WHERE id >= ? "
                f"AND webhook_key IN ({marks}) "
                "GROUP BY webhook_key",
                (first if complete else last - scan_limit + 1, *keys),
            )
            return {key: (count, delivered) for key, count, delivered in rows}, complete

        return self._snapshot(work)

    def messages_of(self, key: str, moments: Sequence[float], slack: float) -> list[StoredMessage]:
        def work(conn: sqlite3.Connection) -> list[StoredMessage]:
            found: dict[int, StoredMessage] = {}
            for moment in moments:
                low = _first_id(conn, "messages", "created_at", moment - slack)
                high = _first_id(conn, "messages", "created_at", moment + slack, strictly_after=True)
                rows = conn.execute(
                    f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE id >= ? AND id < ? AND webhook_key = ?",
                    (low, high, key),
                )
                found.update((row[0], StoredMessage(*row)) for row in rows)
            return [found[i] for i in sorted(found)]

        return self._snapshot(work)

    def activity(self, start: float, minutes: int) -> Activity:
        edges = [start + 60 * m for m in range(minutes + 1)]

        def work(conn: sqlite3.Connection) -> Activity:
            received, exact_received = _per_minute(conn, "received_at", edges)
            processed, exact_processed = _per_minute(conn, "processed_at", edges, table="webhook_state")
            delivered = [  # range counts on the partial index of delivered messages
                conn.execute(
                    "SELECT COUNT(*) FROM messages WHERE delivered_at >= ? AND delivered_at < ?", (low, high)
                ).fetchone()[0]
                for low, high in itertools.pairwise(edges)
            ]
            return Activity(start, received, processed, delivered, not (exact_received and exact_processed))

        return self._snapshot(work)

    def recent_dead_letters(self, limit: int, before: int | None = None) -> list[DeadLetter]:
        rows = self.conn.execute(
            f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id < ? AND replayed_at IS NULL "
            "ORDER BY id DESC LIMIT ?",
            (before if before is not None else _NO_ID, limit),
        )
        return [DeadLetter(*row) for row in rows]

    def dead_letters_since(self, since: float, limit: int) -> list[DeadLetter]:
        def work(conn: sqlite3.Connection) -> list[DeadLetter]:
            first = _first_id(conn, "dead_letters", "created_at", since - CONSOLE_SLACK_SECONDS)
            rows = conn.execute(
                f"SELECT {DEAD_LETTER_COLUMNS} FROM dead_letters WHERE id >= ? AND created_at >= ? ORDER BY id LIMIT ?",
                (first, since, limit),
            )
            return [DeadLetter(*row) for row in rows]

        return self._snapshot(work)

    def find_webhooks(self, found: WebhookFilter, limit: int, before: int | None = None) -> FoundWebhooks:
        return self._snapshot(lambda conn: find_webhooks(conn, found, limit, before, _FIND_COLUMNS))

    # -- end of console reads ------------------------------------------------------------------------------


# -- console reads: helpers ------------------------------------------------------------------------------------

_SUMMARY_COLUMNS = "w.id, w.key, w.event, w.received_at, s.processed_at, s.unmapped_event IS NOT NULL"  # WebhookSummary
_SUMMARY_TABLES = "webhooks w JOIN webhook_state s ON s.id = w.id"
_MESSAGE_COLUMNS = "id, message_id, event, body, created_at, attempts, last_error, delivered_at"  # StoredMessage
_NO_ID = 2**63 - 1  # above every id: "before" nothing
_BODY_TEXT = "CAST(w.body AS TEXT)"  # stored as a BLOB: SQLite's JSON functions would read a BLOB as JSONB
_FIND_COLUMNS = WebhookColumns(
    mark="?",
    tables=_SUMMARY_TABLES,
    summary=_SUMMARY_COLUMNS,
    id="w.id",
    event="w.event",
    received="w.received_at",
    processed="s.processed_at",
    unmapped="s.unmapped_event",
    body="w.body",
    body_contains=f"instr({_BODY_TEXT}, ?) > 0",  # a quick test before the JSON is parsed
    body_field=f"CAST(json_extract({_BODY_TEXT}, ?) AS TEXT)",
    call_id_path="$.data.id",
    related_call_path="$.data.call_id",
)


# The shared helpers (engine.outbox.base) in SQLite's dialect.
_first_id = functools.partial(first_id, mark="?")
_per_minute = functools.partial(per_minute, mark="?", minute="CAST(({column} - ?) / 60 AS INTEGER)")


# -- end of console reads: helpers ------------------------------------------------------------------------------


LOCK_PATIENCE_SECONDS = 3.0  # a write waits at most this long for another process's transaction
# Webhooks in one INSERT at most. Each size is a statement of its own in the connection's cache, ~0.5 KB a row:
# up to 64 that is 1 MB, up to the committer's 512 it was 67 MB. Groups that large come only with hundreds of
# concurrent senders, and go in INSERTs of this size in one transaction.
ROWS_PER_INSERT = 64


def _begin_immediate(conn: sqlite3.Connection) -> None:
    _retry_while_locked(conn, "BEGIN IMMEDIATE")


@functools.lru_cache(maxsize=ROWS_PER_INSERT)
def _insert_webhooks_sql(rows: int) -> str:
    values = ", ".join(["(?, ?, ?, ?)"] * rows)
    return f"INSERT INTO webhooks (key, event, received_at, body) VALUES {values} ON CONFLICT (key) DO NOTHING"


def _execute(conn: sqlite3.Connection, sql: str, parameters: Sequence[object] = ()) -> sqlite3.Cursor:
    return conn.execute(sql, parameters)


def _retry_while_locked(conn: sqlite3.Connection, sql: str, parameters: Sequence[object] = ()) -> sqlite3.Cursor:
    """Run a statement that takes the write lock (BEGIN IMMEDIATE, or a write in a transaction of its own),
    again every 0.1 to 1 ms while another connection writes, up to LOCK_PATIENCE_SECONDS. Nothing is written
    when the lock is refused, so trying again is safe."""
    deadline = 0.0
    pause = 0.0001
    while True:
        try:
            return conn.execute(sql, parameters)
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            now = time.monotonic()
            deadline = deadline or now + LOCK_PATIENCE_SECONDS
            if now > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.001)


def _use_wal(conn: sqlite3.Connection, patience: float = 3.0) -> None:
    """Switch the file to WAL (it stays so). SQLite answers "database is locked" at once, without its busy
    timeout, when another connection is switching the same new file: as --workers N do on first start."""
    deadline = time.monotonic() + patience
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _statements(script: str) -> list[str]:
    """Split a migration into statements (executescript would commit the surrounding transaction)."""
    statements, current = [], []
    for line in script.splitlines():
        current.append(line.split("--", 1)[0])
        if line.rstrip().endswith(";") and sqlite3.complete_statement("\n".join(current)):
            statements.append("\n".join(current).strip())
            current = []
    return [s for s in statements if s.strip(" ;\n")]
