"""The outbox's console reads: what the web console shows, from each backend, and never a full table scan."""

from __future__ import annotations

import sqlite3
import time

import pytest

from engine.aircall.envelope import Webhook
from engine.outbox import (
    NewMessage,
    PendingWebhook,
    Processed,
    SqliteOutbox,
    StoredWebhook,
    open_outbox,
    stored_webhook,
)


def stored(n: int) -> StoredWebhook:
    return stored_webhook(Webhook("call", "call.ended", 1_700_000_000 + n, "secret-token", {"id": n}))


def gateway_round(outbox, first: int, count: int, messages_each: int = 2) -> list[PendingWebhook]:
    """Webhooks stored by the gateway, then mapped by processing into `messages_each` messages each."""
    outbox.append([stored(n) for n in range(first, first + count)])
    claimed = outbox.claim_webhooks(count, 60, "test")
    outbox.commit_processed(
        [
            Processed(
                StoredWebhook(p.key, p.event, p.body),
                [NewMessage(f"m-{p.key}-{i}", p.event, b'{"i":%d}' % i) for i in range(messages_each)],
                id=p.id,
            )
            for p in claimed
        ]
    )
    return claimed


def test_recent_webhooks_newest_first_with_their_bodies_and_counts(outbox):
    mapped = gateway_round(outbox, 0, 5)
    outbox.append([stored(99)])  # waiting to be mapped
    recent = outbox.recent_webhooks(4)
    assert [w.key for w in recent] == [stored(99).key, *(p.key for p in reversed(mapped[2:]))]
    assert recent[0].processed_at is None and recent[1].processed_at is not None
    assert [w.id for w in outbox.recent_webhooks(10, before=recent[1].id)] == [p.id for p in reversed(mapped[:4])]

    summary, body = outbox.webhook_body(mapped[0].id)
    assert (summary.event, body) == ("call.ended", stored(0).body)
    assert b"secret-token" not in body
    assert outbox.webhook_body(10**9) is None
    assert outbox.webhook_ids([mapped[1].key, "missing"]) == {mapped[1].key: mapped[1].id}

    keys = [w.key for w in recent]
    counts, complete = outbox.message_counts(keys, since=time.time() - 60, scan_limit=1000)
    assert complete and counts == {key: (2, 0) for key in keys[1:]}
    claimed = outbox.claim(100, 60, "delivery")
    outbox.ack([c.id for c in claimed if c.message_id.startswith(f"m-{keys[1]}")])
    counts, complete = outbox.message_counts(keys, since=time.time() - 60, scan_limit=3)
    # Only the newest three messages were counted: both of the newest webhook's, one of the next one's.
    assert not complete and counts == {keys[1]: (2, 2), keys[2]: (1, 0)}


def test_messages_of_a_webhook_are_those_made_when_it_was_mapped(outbox):
    mapped = gateway_round(outbox, 0, 3)
    summary, _ = outbox.webhook_body(mapped[1].id)
    found = outbox.messages_of(mapped[1].key, [summary.processed_at], slack=5)
    assert [m.message_id for m in found] == [f"m-{mapped[1].key}-0", f"m-{mapped[1].key}-1"]
    assert found[0].body == b'{"i":0}' and found[0].delivered_at is None
    assert outbox.messages_of(mapped[1].key, [summary.processed_at + 3600], slack=5) == []


def test_activity_counts_each_stage_in_its_minute(outbox):
    gateway_round(outbox, 0, 4)
    outbox.append([stored(50)])
    claimed = outbox.claim(3, 60, "delivery")
    outbox.ack([c.id for c in claimed])
    now = time.time()
    start = (now // 60) * 60 - 59 * 60
    activity = outbox.activity(start, 60)
    assert (sum(activity.received), sum(activity.processed), sum(activity.delivered)) == (5, 4, 3)
    assert activity.received[-1] == 5 or now - (now // 60) * 60 < 2  # the current minute, unless it just turned
    assert outbox.activity(now + 120, 60).received == [0] * 60


def test_dead_letters_newest_first_and_since(outbox):
    mapped = gateway_round(outbox, 0, 2)
    outbox.keep_webhook(stored(7), "mapping failed")
    outbox.dead([outbox.claim(1, 60, "d")[0].id], "Segment refused it")
    letters = outbox.recent_dead_letters(10)
    assert [letter.reason for letter in letters] == ["Segment refused it", "mapping failed"]
    assert letters[0].webhook == mapped[0].body or letters[0].webhook == mapped[1].body
    outbox.mark_replayed([letters[1].id])
    assert [letter.id for letter in outbox.recent_dead_letters(10)] == [letters[0].id]
    assert [letter.id for letter in outbox.dead_letters_since(time.time() - 60, 10)] == [
        letters[1].id,
        letters[0].id,
    ]
    assert outbox.dead_letters_since(time.time() + 60, 10) == []


# -- SQLite: bisection over the primary key, and the query plans -------------------------------------------------


def test_bisection_finds_the_first_row_of_a_time_window_among_gaps(tmp_path):
    outbox = SqliteOutbox(tmp_path / "outbox.sqlite3")
    conn = outbox.conn
    # 1,000 webhooks a minute apart, every third row deleted (pruned): ids with gaps, times growing with them.
    conn.executemany(
        "INSERT INTO webhooks (id, key, event, received_at, body, processed_at) VALUES (?, ?, 'call.ended', ?, x'', ?)",
        [(i, f"k{i}", 1_000_000 + 60 * i, 1_000_000 + 60 * i + 1) for i in range(1, 1001) if i % 3],
    )
    start = 1_000_000 + 60 * 900
    activity = outbox.activity(start, 60)
    expected = [0 if (900 + m) % 3 == 0 else 1 for m in range(60)]
    assert activity.received == expected and activity.processed == expected
    outbox.close()


def test_a_busy_hour_is_counted_from_id_ranges_with_the_same_figures(tmp_path, monkeypatch):
    import engine.outbox.base

    outbox = SqliteOutbox(tmp_path / "outbox.sqlite3")
    start = 1_000_000.0
    outbox.conn.executemany(
        "INSERT INTO webhooks (id, key, event, received_at, body, processed_at) VALUES (?, ?, 'call.ended', ?, x'', ?)",
        [(i, f"k{i}", start + i * 1.7, start + i * 1.7 + 30) for i in range(1, 2001)],
    )
    exact = outbox.activity(start, 60)
    monkeypatch.setattr(engine.outbox.base, "ACTIVITY_EXACT_ROWS", 100)
    estimated = outbox.activity(start, 60)
    assert not exact.estimated and estimated.estimated
    assert (estimated.received, estimated.processed) == (exact.received, exact.processed)
    assert sum(exact.received) == sum(exact.processed) == 2000 and exact.processed[0] == 17  # mapped 30 s later
    outbox.close()


def traced_plans(outbox: SqliteOutbox, read) -> list[str]:  # type: ignore[no-untyped-def]
    statements: list[str] = []
    outbox.conn.set_trace_callback(statements.append)
    read()
    outbox.conn.set_trace_callback(None)
    plans = []
    for sql in statements:
        if sql.startswith("SELECT"):
            plans += [row[3] for row in outbox.conn.execute("EXPLAIN QUERY PLAN " + sql)]
    return plans


def test_every_console_read_uses_an_index_not_a_table_scan(tmp_path):
    outbox = SqliteOutbox(tmp_path / "outbox.sqlite3")
    mapped = gateway_round(outbox, 0, 20)
    outbox.keep_webhook(stored(99), "mapping failed")
    reader = open_outbox(str(tmp_path / "outbox.sqlite3"), read_only=True)
    now = time.time()
    reads = {
        "recent_webhooks": lambda: reader.recent_webhooks(300),
        "webhook_body": lambda: reader.webhook_body(mapped[0].id),
        "webhook_ids": lambda: reader.webhook_ids([p.key for p in mapped]),
        "message_counts": lambda: reader.message_counts([p.key for p in mapped], now - 60, 10_000),
        "messages_of": lambda: reader.messages_of(mapped[0].key, [now], 5),
        "activity": lambda: reader.activity(now - 3600, 60),
        "recent_dead_letters": lambda: reader.recent_dead_letters(100),
        "dead_letters_since": lambda: reader.dead_letters_since(now - 60, 100),
    }
    for name, read in reads.items():
        plans = traced_plans(reader, read)
        assert plans, name
        scans = [plan for plan in plans if plan.startswith("SCAN ")]  # of any table, by its name or an alias
        assert not scans, f"{name} scans a table: {scans}"
    delivered = traced_plans(reader, reads["activity"])
    assert any("INDEX messages_delivered" in plan for plan in delivered), delivered
    reader.close()
    outbox.close()


def test_console_reads_work_on_a_read_only_connection(tmp_path):
    outbox = SqliteOutbox(tmp_path / "outbox.sqlite3")
    gateway_round(outbox, 0, 2)
    reader = open_outbox(str(tmp_path / "outbox.sqlite3"), read_only=True)
    assert len(reader.recent_webhooks(10)) == 2
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader.conn.execute("DELETE FROM webhooks")
    reader.close()
    outbox.close()
