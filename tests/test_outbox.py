"""The outbox contract: what any store (SQLite now, PostgreSQL later) must do, on a real SQLite file.

Written against the Outbox interface so that another backend can run the same tests by adding a fixture param.
"""

from __future__ import annotations

import itertools
import sqlite3
import time

import pytest

from engine.aircall.envelope import Webhook
from engine.outbox import (
    SCHEMA_VERSION,
    NewMessage,
    OutboxRefused,
    Processed,
    SqliteOutbox,
    StoredWebhook,
    stored_webhook,
)


@pytest.fixture
def sqlite_outbox(tmp_path):
    store = SqliteOutbox(tmp_path / "var" / "outbox.sqlite3")
    yield store
    store.close()


def webhook(n: int, event: str = "call.ended") -> Webhook:
    return Webhook("call", event, 1_700_000_000 + n, "secret-token", {"id": n, "duration": 10})


def messages(n: int, count: int = 1) -> list[NewMessage]:
    return [NewMessage(f"m-{n}-{i}", "call.ended", b'{"messageId":"m-%d-%d"}' % (n, i)) for i in range(count)]


def fill(outbox, count: int) -> None:
    outbox.enqueue([(stored_webhook(webhook(n)), messages(n)) for n in range(count)])


def test_file_and_folder_are_created_with_a_versioned_schema(sqlite_outbox):
    outbox = sqlite_outbox
    assert outbox.path.exists()
    version = sqlite3.connect(outbox.path).execute("PRAGMA user_version").fetchone()[0]
    assert version == SCHEMA_VERSION
    assert sqlite3.connect(outbox.path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_workers_starting_together_on_a_new_file_migrate_it_once(tmp_path):
    """`engine serve --workers N` opens the same new file from N processes at once."""
    import concurrent.futures
    import threading

    for attempt in range(10):
        path = tmp_path / f"new-{attempt}.sqlite3"
        start = threading.Barrier(6)

        def open_together(path=path, start=start) -> int:
            start.wait()
            outbox = SqliteOutbox(path)
            try:
                return outbox.stats().pending
            finally:
                outbox.close()

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            assert list(pool.map(lambda _: open_together(), range(6))) == [0] * 6
        assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_reopening_keeps_everything_and_does_not_migrate_again(sqlite_outbox, tmp_path):
    outbox = sqlite_outbox
    fill(outbox, 3)
    outbox.close()
    schema_before = sqlite3.connect(outbox.path).execute("PRAGMA schema_version").fetchone()[0]
    # Another process holds the write lock (a worker committing): opening an outbox that needs no migration
    # takes no write lock, so it neither waits for it nor fails with "database is locked".
    holder = sqlite3.connect(outbox.path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        again = SqliteOutbox(outbox.path)
        assert time.monotonic() - started < 1.0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert again.stats().pending == 3
    again.close()
    assert sqlite3.connect(outbox.path).execute("PRAGMA schema_version").fetchone()[0] == schema_before


def test_enqueue_is_idempotent_on_message_id(outbox):
    record = stored_webhook(webhook(1))
    assert outbox.enqueue([(record, messages(1, 2))]) == [2]
    assert outbox.enqueue([(record, messages(1, 2))]) == [0]
    assert outbox.stats().pending == 2


def test_group_of_webhooks_in_one_transaction_reports_each(outbox):
    batch = [(stored_webhook(webhook(n)), messages(n, n % 3 + 1)) for n in range(10)]
    assert outbox.enqueue(batch) == [n % 3 + 1 for n in range(10)]


def test_stored_webhook_never_keeps_the_token(outbox):
    record = stored_webhook(webhook(1))
    assert b"secret-token" not in record.body and b'"duration":10' in record.body


def test_a_claim_is_exclusive_until_its_lease_ends(outbox):
    fill(outbox, 5)
    first = outbox.claim(10, lease_seconds=1.0, owner="a")  # long enough for a busy CI machine's next line
    assert [c.message_id for c in first] == [f"m-{n}-0" for n in range(5)]
    assert outbox.claim(10, lease_seconds=1.0, owner="b") == []
    time.sleep(1.05)  # worker a died: its lease runs out
    assert len(outbox.claim(10, lease_seconds=30, owner="b")) == 5


def test_claim_respects_the_limit_and_order(outbox):
    fill(outbox, 5)
    assert [c.message_id for c in outbox.claim(2, 30, "a")] == ["m-0-0", "m-1-0"]
    assert [c.message_id for c in outbox.claim(2, 30, "a")] == ["m-2-0", "m-3-0"]


def test_ack_marks_delivered_and_prune_removes_after_retention(outbox):
    fill(outbox, 3)
    claimed = outbox.claim(10, 30, "a")
    outbox.ack([c.id for c in claimed[:2]])
    stats = outbox.stats()
    assert (stats.pending, stats.delivered) == (1, 2)
    assert outbox.prune(older_than_seconds=3600) == 0  # within retention: kept
    time.sleep(0.01)
    assert outbox.prune(older_than_seconds=0) == 2
    assert outbox.stats().delivered == 0 and outbox.stats().pending == 1
    assert len(outbox.message_bodies()) == 1


def _old_delivered_history(outbox: SqliteOutbox, webhooks: int, messages: int) -> None:
    """`webhooks` mapped long ago, `messages` of theirs delivered long ago, but every tenth still pending."""
    old = time.time() - 30 * 86400
    conn = outbox.conn
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO webhooks (key, event, received_at, body, processed_at) VALUES (?, 'call.ended', ?, x'7b7d', ?)",
        [(f"w{i}", old, old) for i in range(webhooks)],
    )
    conn.executemany(
        "INSERT INTO messages (message_id, webhook_key, event, body, size, created_at, due_at, delivered_at) "
        "VALUES (?, ?, 'e', x'7b7d', 2, ?, ?, ?)",
        [(f"m{i}", f"w{i % webhooks}", old, old, old if i % 10 else None) for i in range(messages)],
    )
    conn.execute("COMMIT")


def test_prune_keeps_the_webhooks_of_pending_messages_and_reads_the_messages_once_not_once_per_webhook(tmp_path):
    """Prune runs on the gateway's commit thread: a prune whose work grew with webhooks x messages held every
    webhook's answer for minutes on a large outbox. Its work is counted in SQLite's VM steps, not timed."""
    steps = []
    for scale in (1, 2):
        outbox = SqliteOutbox(tmp_path / f"x{scale}.sqlite3")
        _old_delivered_history(outbox, 300 * scale, 3000 * scale)
        ticks = itertools.count()
        outbox.conn.set_progress_handler(lambda ticks=ticks: next(ticks) and None, 100)  # None: go on
        assert outbox.prune(older_than_seconds=86400) == 2700 * scale
        outbox.conn.set_progress_handler(None, 0)
        steps.append(next(ticks))
        kept = {row[0] for row in outbox.conn.execute("SELECT key FROM webhooks")}
        assert kept == {f"w{i}" for i in range(0, 300 * scale, 10)}  # each still has a pending message
        outbox.close()
    assert steps[1] < 3 * steps[0], steps  # twice the rows, about twice the work (four times if quadratic)


def test_retry_counts_the_attempt_and_waits(outbox):
    fill(outbox, 1)
    [claimed] = outbox.claim(10, 30, "a")
    outbox.retry([claimed.id], delay=0.6, error="Segment answered 503", owner="a")
    assert outbox.claim(10, 30, "a") == []
    stats = outbox.stats()
    assert stats.last_error == "Segment answered 503" and stats.due == 0
    time.sleep(0.65)
    [again] = outbox.claim(10, 30, "a")
    assert again.attempts == 1


def test_postponed_messages_are_not_counted_as_attempted(outbox):
    fill(outbox, 1)
    [claimed] = outbox.claim(10, 30, "a")
    outbox.retry([claimed.id], 0, None, "a", attempted=False)
    assert outbox.claim(10, 30, "a")[0].attempts == 0


def test_another_workers_retry_does_not_steal_a_live_claim(outbox):
    fill(outbox, 1)
    [claimed] = outbox.claim(10, 0.01, "a")
    time.sleep(0.02)
    outbox.claim(10, 30, "b")  # a's lease ran out, b holds it now
    outbox.retry([claimed.id], 0, "late answer for a", "a")
    assert outbox.claim(10, 30, "c") == []  # still b's


def test_dead_moves_the_message_with_its_webhook_and_reason(outbox):
    fill(outbox, 2)
    claimed = outbox.claim(10, 30, "a")
    outbox.dead([claimed[0].id], "Segment answered 400: bad")
    [letter] = outbox.dead_letters()
    assert (letter.message_id, letter.reason, letter.attempts) == ("m-0-0", "Segment answered 400: bad", 1)
    assert b'"id":0' in letter.webhook
    assert outbox.stats().pending == 1 and outbox.stats().dead_letters == 1
    outbox.mark_replayed([letter.id])
    assert outbox.dead_letters() == [] and outbox.stats().dead_letters == 0


def test_discard_deletes_the_chosen_dead_letters_never_replayed_ones(outbox):
    fill(outbox, 4)
    claimed = outbox.claim(10, 30, "a")
    for one in claimed:
        outbox.dead([one.id], f"Segment answered 400: {one.message_id}")
    first, second, third, fourth = outbox.dead_letters()
    outbox.mark_replayed([first.id])
    assert [d.message_id for d in outbox.discard_dead_letters([first.id, second.id])] == ["m-1-0"]
    assert [d.id for d in outbox.dead_letters()] == [third.id, fourth.id]
    assert [d.id for d in outbox.dead_letters(include_replayed=True)] == [first.id, third.id, fourth.id]
    assert [d.reason for d in outbox.discard_dead_letters(None)] == [third.reason, fourth.reason]
    assert outbox.dead_letters() == [] and outbox.stats().dead_letters == 0
    assert outbox.discard_dead_letters(None) == []
    # The replayed one is kept as long as delivered messages are, then pruned with them.
    outbox.prune(older_than_seconds=3600)
    assert [d.id for d in outbox.dead_letters(include_replayed=True)] == [first.id]
    time.sleep(0.01)
    outbox.prune(older_than_seconds=0)
    assert outbox.dead_letters(include_replayed=True) == []


def test_keep_webhook_stores_an_unmappable_webhook(outbox):
    outbox.keep_webhook(stored_webhook(webhook(7)), "call.ended.yaml: TypeError")
    [letter] = outbox.dead_letters()
    assert letter.message_id is None and letter.reason == "call.ended.yaml: TypeError"


def test_release_hands_claims_back_at_once(outbox):
    fill(outbox, 3)
    outbox.claim(10, 300, "a")
    outbox.release("a")
    assert len(outbox.claim(10, 30, "b")) == 3


def test_stats_and_next_due(outbox):
    assert outbox.stats().oldest_pending_age is None and outbox.next_due() is None
    fill(outbox, 2)
    stats = outbox.stats()
    assert (stats.pending, stats.due, stats.dead_letters) == (2, 2, 0)
    assert stats.oldest_pending_age >= 0 and outbox.next_due() <= time.time()


def test_retry_now_skips_the_backoff(outbox):
    fill(outbox, 2)
    claimed = outbox.claim(10, 30, "a")
    outbox.retry([c.id for c in claimed], 3600, "down", "a")
    assert outbox.claim(10, 30, "a") == []
    assert outbox.retry_now() == 2
    assert len(outbox.claim(10, 30, "a")) == 2


def test_a_newer_schema_is_refused(tmp_path):
    path = tmp_path / "o.sqlite3"
    SqliteOutbox(path).close()
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(OutboxRefused, match="newer than this engine's"):
        SqliteOutbox(path)


def test_raw_body_is_stored_with_the_token_blanked():
    raw = b'{"resource": "call", "event": "call.ended", "timestamp": 1, "token": "s3cr3t", "data": {"id": 1, "x": 2}}'
    record = stored_webhook(Webhook("call", "call.ended", 1, "s3cr3t", {"id": 1, "x": 2}), raw)
    assert record.body == raw.replace(b'"token": "s3cr3t"', b'"token":""')
    escaped = b'{"token": "s3\\u0063r3t", "data": {"note": "s3cr3t"}, "resource": "call", "event": "call.ended"}'
    fallback = stored_webhook(Webhook("call", "call.ended", 1, "s3cr3t", {"note": "s3cr3t"}), escaped)
    assert b"token" not in fallback.body  # could not be sure of the raw body: encoded afresh, token left out


def test_an_outbox_of_the_previous_schema_is_migrated_keeping_its_messages(tmp_path):
    from engine.outbox.sqlite import _MIGRATIONS, _statements

    path = tmp_path / "old.sqlite3"
    conn = sqlite3.connect(path)
    for statement in _statements(_MIGRATIONS[1]):
        conn.execute(statement)
    conn.execute("INSERT INTO messages (message_id, webhook_key, event, body, size, created_at, due_at) "
                 "VALUES ('m', 'w', 'call.ended', x'7b7d', 2, 0, 0)")  # fmt: skip
    conn.execute("PRAGMA user_version=1")
    conn.commit()
    conn.close()
    outbox = SqliteOutbox(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert outbox.stats().pending == 1
    assert outbox.backfill_start("calls", 0, 10) == (0, None)  # the new table is there


def test_processing_state_moves_out_of_the_webhooks_rows_keeping_what_is_mapped_claimed_and_waiting(tmp_path):
    """Schema 4 kept a webhook's processing state in its own row; 5 keeps it in narrow rows of its own. A file
    of schema 4 keeps, for each webhook, whether it is mapped (and when), and who holds its claim."""
    from engine.outbox.sqlite import _MIGRATIONS, _statements

    path = tmp_path / "v4.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for version in range(1, 5):
        for statement in _statements(_MIGRATIONS[version]):
            conn.execute(statement)
    later = time.time() + 3600
    conn.executemany(  # as schema 4 wrote them: mapped; claimed by a worker now gone; waiting
        "INSERT INTO webhooks (key, event, received_at, body, processed_at, lease_until, lease_owner) "
        "VALUES (?, 'call.ended', 100, x'7b7d', ?, ?, ?)",
        [("mapped", 150.0, 0, None), ("claimed", None, later, "gone"), ("waiting", None, 0, None)],
    )
    conn.execute("PRAGMA user_version=4")
    conn.close()

    outbox = SqliteOutbox(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    summaries = {s.key: s.processed_at for s in outbox.recent_webhooks(10)}
    assert summaries == {"mapped": 150.0, "claimed": None, "waiting": None}
    assert outbox.stats().unprocessed == 2
    assert [w.key for w in outbox.claim_webhooks(10, 60, "one")] == ["waiting"]  # "claimed" is still leased
    outbox.release("gone")
    assert [w.key for w in outbox.claim_webhooks(10, 60, "two")] == ["claimed"]
    # A webhook stored after the migration gets its state row from the gateway's one INSERT.
    assert outbox.append([StoredWebhook("new", "call.ended", b"{}")]) == [True]
    claimed = outbox.claim_webhooks(10, 60, "three")
    assert [(w.key, w.body) for w in claimed] == [("new", b"{}")]
    new = claimed[0]
    assert outbox.commit_processed([Processed(StoredWebhook(new.key, new.event, new.body), [], id=new.id)]) == [0]
    assert outbox.stats().unprocessed == 2  # "waiting" and "claimed": claimed, not committed
    outbox.close()


def test_database_urls_are_shown_without_their_password():
    from engine.outbox import describe_db

    assert (
        describe_db("postgresql://bridge:s3cret@db.internal:5432/engine")
        == "postgresql://bridge:***@db.internal:5432/engine"
    )
    assert describe_db("postgresql://bridge@db/engine") == "postgresql://bridge@db/engine"
    assert describe_db("postgresql://bridge:s3@cr@t@db/engine") == "postgresql://bridge:***@db/engine"
    assert describe_db("postgresql://bridge:s3/cr?t@db/engine") == "postgresql://bridge:***@db/engine"
    assert describe_db("postgresql://db/engine?sslmode=require&password=s3cr3t") == (
        "postgresql://db/engine?sslmode=require&password=***"
    )
    assert describe_db("var/outbox.sqlite3") == "var/outbox.sqlite3"


def test_an_outbox_of_schema_5_can_hold_webhooks_no_mapping_maps_once_migrated(tmp_path):
    """Schema 6 adds where a held webhook's event is kept; a schema-5 file keeps everything and can hold."""
    from engine.outbox.sqlite import _MIGRATIONS, _statements

    path = tmp_path / "v5.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    for version in range(1, 6):
        for statement in _statements(_MIGRATIONS[version]):
            conn.execute(statement)
    conn.executemany(
        "INSERT INTO webhooks (key, event, received_at, body, processed_at) VALUES (?, ?, 100, x'7b7d', ?)",
        [("mapped", "call.ended", 150.0), ("waiting", "call.some_future_event.v3", None)],
    )
    conn.execute("PRAGMA user_version=5")
    conn.close()

    outbox = SqliteOutbox(path)
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    [waiting] = outbox.claim_webhooks(10, 60, "one")
    held = Processed(StoredWebhook(waiting.key, waiting.event, waiting.body), id=waiting.id, held=True)
    assert outbox.commit_processed([held]) == [0]
    assert (outbox.stats().unmapped, outbox.stats().unprocessed) == ({"call.some_future_event.v3": 1}, 0)
    assert outbox.release_unmapped(["call.some_future_event.v3"]) == 1
    assert [w.key for w in outbox.claim_webhooks(10, 60, "two")] == ["waiting"]
    outbox.close()


def test_a_postgresql_outbox_of_schema_4_is_migrated_and_can_hold(postgres_url):
    import psycopg

    from engine.outbox import open_outbox
    from engine.outbox.postgres import _MIGRATIONS

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE engine_schema (version INTEGER NOT NULL)")
        for version in range(1, 5):
            for statement in _MIGRATIONS[version]:
                conn.execute(statement)
        conn.execute("INSERT INTO engine_schema (version) VALUES (4)")
        conn.execute(
            "INSERT INTO webhooks (key, event, received_at, body) VALUES ('waiting', 'message.translated', 100, '{}')"
        )
    outbox = open_outbox(postgres_url)
    try:
        [waiting] = outbox.claim_webhooks(10, 60, "one")
        held = Processed(StoredWebhook(waiting.key, waiting.event, waiting.body), id=waiting.id, held=True)
        assert outbox.commit_processed([held]) == [0]
        assert outbox.stats().unmapped == {"message.translated": 1}
        assert outbox.release_unmapped(["message.translated"]) == 1
        assert [w.key for w in outbox.claim_webhooks(10, 60, "two")] == ["waiting"]
    finally:
        outbox.close()


def test_an_ended_console_session_is_remembered_as_long_as_a_session_lives_and_no_longer(outbox):
    from engine.outbox import ALL_SESSIONS, CONSOLE_SESSION_SECONDS

    now = time.time()
    assert not outbox.console_session_ended("a", now - 10)
    outbox.end_console_session("a", now)
    outbox.end_console_session("a", now - 5)  # a later sign-out of the same session moves nothing back
    assert outbox.console_session_ended("a", now - 10)
    assert not outbox.console_session_ended("b", now - 10)
    outbox.end_console_session(ALL_SESSIONS, now)
    assert outbox.console_session_ended("b", now - 10)  # begun before "everywhere"
    assert not outbox.console_session_ended("c", now + 1)  # begun after it
    outbox.prune(older_than_seconds=CONSOLE_SESSION_SECONDS * 10)  # the retention of webhooks has no say here
    assert outbox.console_session_ended("a", now - 10)
    outbox.end_console_session("old", now - CONSOLE_SESSION_SECONDS - 60)
    outbox.prune(older_than_seconds=CONSOLE_SESSION_SECONDS * 10)
    assert not outbox.console_session_ended("old", now + 1)  # its cookie has expired anyway
