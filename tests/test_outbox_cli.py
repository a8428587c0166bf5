"""`engine outbox status` (as text), `engine outbox replay` (pending messages due now) and `engine outbox
discard` (dead letters nobody will replay), through the CLI."""

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


def test_discard_deletes_the_chosen_dead_letters_and_says_which(engine, tmp_path):
    outbox = backlog(tmp_path / "o.sqlite3")
    outbox.retry_now()
    outbox.dead([c.id for c in outbox.claim(10, 30, "worker")], "Segment answered 400: bad userId")
    outbox.keep_webhook(stored_webhook(Webhook("call", "call.ended", 1_700_000_009, "", {"id": 9})), "TypeError")
    first, second, third = outbox.dead_letters()
    env = {"ENGINE_DB": str(tmp_path / "o.sqlite3")}
    assert engine("outbox", "discard", env=env).code == 2  # --id or --all: never everything by accident
    one = engine("outbox", "discard", "--id", str(first.id), "--id", "999", env=env)
    assert one.code == 2 and "no dead letter waiting with id #999" in one.err
    assert one.out.splitlines() == [
        f"  discarded dead #{first.id} call.ended m-1: Segment answered 400: bad userId",
        "discarded 1 dead letter(s)",
    ]
    rest = engine("outbox", "discard", "--all", env=env)
    assert rest.code == 0 and rest.out.splitlines()[-1] == "discarded 2 dead letter(s)"
    assert f"dead #{third.id} call.ended whole webhook: TypeError" in rest.out
    status = engine("outbox", "status", "--dead", env=env)
    assert "dead letters 0" in status.out and "dead #" not in status.out
    assert outbox.stats().pending == 0 and second.id not in {d.id for d in outbox.dead_letters(include_replayed=True)}


def test_replay_and_discard_of_an_unknown_dead_letter_give_the_same_answer(engine, tmp_path):
    outbox = backlog(tmp_path / "o.sqlite3")
    outbox.keep_webhook(stored_webhook(Webhook("call", "call.ended", 1_700_000_009, "", {"id": 9})), "TypeError")
    [letter] = outbox.dead_letters()
    env = {"ENGINE_DB": str(tmp_path / "o.sqlite3")}
    missing = "engine: no dead letter waiting with id #999 (see engine outbox status --dead)\n"
    replay = engine("outbox", "replay", "--dead", "--id", "999", env=env)
    assert (replay.code, replay.err) == (2, missing)
    discard = engine("outbox", "discard", "--id", "999", env=env)
    assert (discard.code, discard.err) == (2, missing)
    both = engine("outbox", "replay", "--dead", "--id", str(letter.id), "--id", "999", env=env)
    assert (both.code, both.err) == (2, missing)
    assert both.out == "replayed 1 dead letter(s): 1 message(s) queued again\n"
