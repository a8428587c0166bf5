"""`engine outbox status` (as text) and `engine outbox replay` (pending messages due now), through the CLI."""

from __future__ import annotations

from engine.envelope import Webhook
from engine.outbox import NewMessage, SqliteOutbox, stored_webhook


def backlog(path) -> SqliteOutbox:
    outbox = SqliteOutbox(path)
    record = stored_webhook(Webhook("call", "call.ended", 1_700_000_000, "", {"id": 1}))
    outbox.enqueue([(record, [NewMessage("m-1", "call.ended", b"{}"), NewMessage("m-2", "call.ended", b"{}")])])
    claimed = outbox.claim(10, 30, "worker")
    outbox.retry([c.id for c in claimed], 3600, "Segment answered 503: down", "worker")
    return outbox


def test_status_as_text_shows_pending_due_and_the_last_error(engine, tmp_path):
    backlog(tmp_path / "o.sqlite3").close()
    run = engine("outbox", "status", env={"ENGINE_DB": str(tmp_path / "o.sqlite3")})
    assert run.code == 0
    lines = run.out.splitlines()
    assert lines[0].startswith("pending 2 (due now 0, oldest ")
    assert lines[1:] == ["delivered 0 (kept for the retention period)", "dead letters 0",
                         "last error: Segment answered 503: down"]  # fmt: skip


def test_replay_makes_pending_messages_due_now(engine, tmp_path):
    outbox = backlog(tmp_path / "o.sqlite3")
    env = {"ENGINE_DB": str(tmp_path / "o.sqlite3")}
    run = engine("outbox", "replay", env=env)
    assert (run.code, run.out.strip()) == (0, "2 pending message(s) due now")
    assert outbox.stats().due == 2
    misuse = engine("outbox", "replay", "--id", "3", env=env)
    assert (misuse.code, misuse.err.strip()) == (2, "engine: --id selects dead letters: use it with --dead")


def test_status_without_an_outbox_is_a_usage_error(engine, tmp_path):
    run = engine("outbox", "status", env={"ENGINE_DB": str(tmp_path / "none.sqlite3")})
    assert run.code == 2 and "no outbox at" in run.err
