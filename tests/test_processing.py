"""The processing stage: webhooks the gateway stored are mapped after the answer, once, whatever happens.

The store's part (claims, leases, the processed mark in the messages' transaction) runs on both backends; the
worker's part through a real `engine serve`.
"""

from __future__ import annotations

import json
import sqlite3
import time

import pytest

from engine.aircall.envelope import parse_webhook
from engine.mapping.load import load_mappings
from engine.outbox import OutboxUnavailable, Processed, SqliteOutbox, stored_webhook
from engine.processing.mapper import process_stored
from engine.processing.worker import ProcessingPolicy, work
from tests.conftest import FIXTURES, MAPPINGS, fixture_paths, run_engine
from tests.harness import call_webhook, expected_ids, wait_for


@pytest.fixture(scope="module")
def mappings():
    return load_mappings(MAPPINGS)


def raw(n: int) -> bytes:
    return json.dumps(call_webhook(n)).encode()


def stored(n: int):
    body = raw(n)
    return stored_webhook(parse_webhook(body), body)


def test_a_stored_webhook_waits_unprocessed_and_a_redelivery_is_stored_once(outbox):
    assert outbox.append([stored(1), stored(2)]) == [True, True]
    assert outbox.append([stored(1)]) == [False]
    stats = outbox.stats()
    assert (stats.unprocessed, stats.pending) == (2, 0)
    assert stats.oldest_unprocessed_age is not None and stats.oldest_unprocessed_age >= 0


def test_a_group_commit_tells_each_webhook_whether_it_was_new_when_some_were_not(outbox):
    # The gateway's group commit may hold a redelivery of a stored webhook, and the same webhook twice (Aircall
    # retrying while the first attempt waits for the commit): each hears whether it was the one stored.
    outbox.append([stored(1)])
    assert outbox.append([stored(2), stored(1), stored(3), stored(3), stored(4)]) == [True, False, True, False, True]
    assert outbox.stats().unprocessed == 4
    assert outbox.append([stored(5), stored(6)]) == [True, True]


def test_a_group_too_big_for_one_insert_is_stored_all_or_nothing(tmp_path, monkeypatch):
    # A SQLite taking fewer parameters in a statement than a group needs (before 3.32) gets the group in several
    # INSERTs: in one transaction, so that a group refused (503, Aircall retries it) left nothing stored.
    import engine.outbox.sqlite as sqlite_store

    outbox = SqliteOutbox(tmp_path / "o.sqlite3")
    group = [stored(1), stored(2), stored(3), stored(2), stored(4)]
    sql = sqlite_store._insert_webhooks_sql
    with monkeypatch.context() as patch:  # the group's last INSERT (one webhook) fails: the disk filled up
        patch.setattr(sqlite_store, "_insert_webhooks_sql", lambda rows: sql(rows) if rows > 1 else "INSERT oops")
        outbox.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 8)  # two webhooks an INSERT
        with pytest.raises(OutboxUnavailable):
            outbox.append(group)
    assert outbox.conn.execute("SELECT COUNT(*) FROM webhooks").fetchone()[0] == 0
    outbox.conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 8)
    assert outbox.append(group) == [True, True, True, False, True]
    assert outbox.append([stored(5), stored(1), stored(6)]) == [True, False, True]


def test_a_claimed_batch_is_not_claimed_again_until_its_lease_ends(outbox):
    outbox.append([stored(n) for n in range(5)])
    first = outbox.claim_webhooks(3, 60, "worker-a")
    second = outbox.claim_webhooks(10, 60, "worker-b")
    assert len(first) == 3 and len(second) == 2
    assert {w.id for w in first}.isdisjoint(w.id for w in second)
    assert outbox.claim_webhooks(10, 60, "worker-c") == []
    outbox.release("worker-a")  # a worker stopping hands its claims back at once
    assert [w.id for w in outbox.claim_webhooks(10, 60, "worker-c")] == [w.id for w in first]


def test_a_worker_takes_its_own_claims_again_at_once_and_no_other_worker_does(outbox):
    outbox.append([stored(n) for n in range(3)])
    first = outbox.claim_webhooks(2, 60, "worker-a")
    others = outbox.claim_webhooks(10, 60, "worker-b")
    assert len(others) == 1 and others[0].id not in {w.id for w in first}
    again = outbox.claim_webhooks(10, 60, "worker-a")  # its commit failed: the same batch, not a 60 s wait
    assert [w.id for w in again] == [w.id for w in first]


class _FailsOnce:
    """An outbox whose first commit of a processed batch fails, as a locked or full disk makes it."""

    def __init__(self, outbox) -> None:
        self.outbox, self.failed = outbox, False

    def commit_processed(self, batch):
        if not self.failed:
            self.failed = True
            raise OutboxUnavailable("database is locked")
        return self.outbox.commit_processed(batch)

    def __getattr__(self, name):
        return getattr(self.outbox, name)


class _UntilMapped:
    """The worker's channel: it stops once nothing waits to be mapped, or after 10 s."""

    def __init__(self, outbox) -> None:
        self.outbox, self.deadline = outbox, time.monotonic() + 10

    def wait(self, seconds: float) -> bool:
        time.sleep(min(seconds, 0.01))
        return not self.stopping()

    def stopping(self) -> bool:
        return self.outbox.stats().unprocessed == 0 or time.monotonic() > self.deadline

    def report(self, mapped: int, dead: int, new_messages: int) -> None:
        pass


def test_a_batch_whose_commit_failed_is_mapped_on_the_next_try_not_after_its_lease(outbox, mappings):
    outbox.append([stored(n) for n in range(5)])
    flaky = _FailsOnce(outbox)
    # The channel gives up after 10 s; waiting for the lease would take 60.
    work(flaky, mappings, ProcessingPolicy(lease_seconds=60, pause_seconds=0.05), _UntilMapped(outbox))
    assert flaky.failed and outbox.stats().unprocessed == 0 and outbox.stats().pending == 5


def test_messages_and_the_processed_mark_are_committed_together_and_only_once(outbox, mappings):
    outbox.append([stored(n) for n in range(3)])
    claimed = outbox.claim_webhooks(10, 0, "slow-worker")  # a lease of 0: taken again at once
    again = outbox.claim_webhooks(10, 60, "other-worker")
    assert [w.id for w in again] == [w.id for w in claimed]
    results = [process_stored(w, mappings) for w in claimed]
    assert outbox.commit_processed(results) == [1, 1, 1]
    # The slow worker finishes the same batch later: nothing is added, the webhooks stay processed.
    assert outbox.commit_processed([process_stored(w, mappings) for w in again]) == [0, 0, 0]
    stats = outbox.stats()
    assert (stats.unprocessed, stats.pending, stats.oldest_unprocessed_age) == (0, 3, None)
    expected = {i for n in range(3) for i in expected_ids(call_webhook(n))}
    assert {json.loads(body)["messageId"] for body in outbox.message_bodies()} == expected


def test_each_webhook_of_a_batch_counts_only_the_messages_it_added(outbox, mappings):
    # A replay or a backfill stores webhooks mapped already; one of them may have its messages stored before
    # (mapped again after a crash): the counts are per webhook, and the others' messages are all stored.
    outbox.append([stored(1)])
    [first] = [process_stored(w, mappings) for w in outbox.claim_webhooks(1, 60, "w")]
    assert outbox.commit_processed([first]) == [1]
    outbox.append([stored(2), stored(3)])
    two, three = [process_stored(w, mappings) for w in outbox.claim_webhooks(2, 60, "w")]
    replayed = Processed(first.webhook, first.messages)  # the same webhook, as a replay hands it over
    assert outbox.commit_processed([two, replayed, three]) == [1, 0, 1]
    assert outbox.stats().pending == 3


def test_a_webhook_its_mapping_cannot_render_becomes_one_dead_letter(outbox, tmp_path):
    folder = tmp_path / "mappings"
    folder.mkdir()
    (folder / "call.ended.yaml").write_text(
        "aircall_event: call.ended\nsegment:\n  type: track\n  event: call.ended\n"
        '  properties:\n    per_second: "{{ 1 / data.duration }}"\n'
    )
    broken = call_webhook(7)
    broken["data"]["duration"] = 0  # a call that never connected: 1 / 0
    body = json.dumps(broken).encode()
    outbox.append([stored_webhook(parse_webhook(body), body)])
    [pending] = outbox.claim_webhooks(10, 60, "worker")
    result = process_stored(pending, load_mappings(folder))
    assert result.dead_reason == "call.ended.yaml: ZeroDivisionError: division by zero"
    assert outbox.commit_processed([result, result]) == [0, 0]
    [letter] = outbox.dead_letters()
    assert (letter.event, letter.message_id, letter.reason) == ("call.ended", None, result.dead_reason)
    assert json.loads(letter.webhook)["data"]["id"] == broken["data"]["id"]
    assert outbox.stats().unprocessed == 0


def test_a_webhook_no_mapping_maps_is_held_then_mapped_to_its_ids_once_a_mapping_is_loaded(outbox, mappings):
    future = call_webhook(8)
    future["event"] = "call.some_future_event.v3"  # an event Aircall has not announced yet
    body = json.dumps(future).encode()
    outbox.append([stored_webhook(parse_webhook(body), body)])
    [pending] = outbox.claim_webhooks(10, 60, "worker")
    result = process_stored(pending, mappings)
    assert result.held and result.dead_reason is None and result.messages == ()
    assert outbox.commit_processed([result]) == [0]
    stats = outbox.stats()
    assert (stats.unprocessed, stats.dead_letters, stats.pending) == (0, 0, 0)
    assert stats.unmapped == {"call.some_future_event.v3": 1}
    assert stats.as_dict()["unmapped_by_event"] == {"call.some_future_event.v3": 1}
    assert outbox.claim_webhooks(10, 0, "worker") == []  # held: not taken again by processing on its own

    assert outbox.release_unmapped(["call.ended", "user.created"]) == 0  # other events: it stays held
    assert outbox.stats().unmapped_total == 1

    # The team adds mappings/call.some_future_event.v3.yaml (here: call.ended's, under the new name).
    with_mapping = load_mappings(MAPPINGS)
    with_mapping.by_event["call.some_future_event.v3"] = with_mapping.by_event["call.ended"]
    assert outbox.release_unmapped(with_mapping.by_event.keys()) == 1
    assert outbox.stats().unmapped == {}
    [again] = outbox.claim_webhooks(10, 60, "worker")
    mapped = process_stored(again, with_mapping)
    assert outbox.commit_processed([mapped]) == [1]
    # The ids it would have had, had the mapping been there when it arrived.
    expected = [m.message_id for m in process_stored(pending, with_mapping).messages]
    assert [m.message_id for m in mapped.messages] == expected and len(expected) == 1
    assert (outbox.stats().pending, outbox.stats().unprocessed) == (1, 0)


def test_a_held_webhook_is_pruned_after_the_retention_like_any_other(outbox, mappings):
    future = call_webhook(9)
    future["event"] = "message.translated"
    body = json.dumps(future).encode()
    outbox.append([stored_webhook(parse_webhook(body), body)])
    [pending] = outbox.claim_webhooks(10, 60, "worker")
    outbox.commit_processed([process_stored(pending, mappings)])
    outbox.prune(3600)
    assert outbox.stats().unmapped == {"message.translated": 1}  # within the retention: kept
    time.sleep(0.05)
    outbox.prune(0.01)
    assert outbox.stats().unmapped == {}
    assert outbox.recent_webhooks(10) == []


def test_an_outbox_of_the_previous_version_counts_its_webhooks_as_processed(tmp_path):
    path = tmp_path / "v2.sqlite3"
    conn = sqlite3.connect(path)
    conn.executescript(
        "CREATE TABLE webhooks (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, event TEXT NOT NULL, "
        "received_at REAL NOT NULL, body BLOB NOT NULL);"
        "INSERT INTO webhooks (key, event, received_at, body) VALUES ('k', 'call.ended', 1, x'7b7d');"
        "CREATE TABLE messages (id INTEGER PRIMARY KEY, message_id TEXT NOT NULL UNIQUE, webhook_key TEXT NOT NULL,"
        " event TEXT NOT NULL, body BLOB NOT NULL, size INTEGER NOT NULL, created_at REAL NOT NULL,"
        " due_at REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, lease_owner TEXT, last_error TEXT,"
        " delivered_at REAL);"
        "CREATE TABLE dead_letters (id INTEGER PRIMARY KEY, message_id TEXT, event TEXT NOT NULL, body BLOB,"
        " webhook BLOB NOT NULL, reason TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
        " created_at REAL NOT NULL, replayed_at REAL);"
        "CREATE TABLE backfills (resource TEXT NOT NULL, since INTEGER NOT NULL, until INTEGER NOT NULL,"
        " done_until INTEGER NOT NULL, fetched INTEGER NOT NULL DEFAULT 0, queued INTEGER NOT NULL DEFAULT 0,"
        " finished_at REAL, updated_at REAL NOT NULL, PRIMARY KEY (resource, since, until));"
        "PRAGMA user_version=2;"
    )
    conn.close()
    outbox = SqliteOutbox(path)
    try:
        assert outbox.stats().unprocessed == 0
        assert outbox.claim_webhooks(10, 60, "worker") == []
    finally:
        outbox.close()


# -- through the server ---------------------------------------------------------------------------------------


def test_accepted_webhooks_are_mapped_into_pending_messages_and_every_view_shows_both_stages(engine_server, segment):
    """Without a write key nothing is sent: the webhooks are mapped after their answers and wait as messages."""
    server = engine_server(with_segment=False)
    webhooks = [call_webhook(n) for n in range(50)]
    for envelope in webhooks:
        assert server.post(envelope).json() == {"status": "accepted"}
    health = wait_for(lambda: (h := server.health())["outbox"]["pending"] == 50 and h, what="all mapped")
    assert health["outbox"]["unprocessed"] == 0 and health["outbox"]["oldest_unprocessed_age_seconds"] is None
    status = run_engine("outbox", "status", "--json", env={"ENGINE_DB": str(server.db)}).json()
    assert (status["unprocessed"], status["pending"]) == (0, 50)
    metrics = server.metrics()
    assert 'aircall_segment_webhooks_processed_total{outcome="mapped"} 50.0' in metrics
    assert "aircall_segment_outbox_oldest_unprocessed_age_seconds 0.0" in metrics


def test_webhooks_stored_but_not_mapped_before_a_stop_are_mapped_and_delivered_after_restart(
    engine_server, segment, tmp_path
):
    """Stored by the gateway, not yet mapped (written as the gateway writes them, with no server running):
    the next server maps and delivers them."""
    db = tmp_path / "outbox.sqlite3"
    outbox = SqliteOutbox(db)
    outbox.append([stored(n) for n in range(30)])
    outbox.close()
    server = engine_server(ENGINE_DB=str(db))
    expected = {i for n in range(30) for i in expected_ids(call_webhook(n))}
    received = segment.wait_for_ids(expected)
    assert received["duplicates"] == 0
    wait_for(lambda: server.health()["outbox"]["unprocessed"] == 0, what="all mapped")


def test_every_sample_webhook_is_stored_as_engine_render_renders_it(engine_server, segment):
    """The server's processing and `engine render` are one function: every sample webhook, posted, leaves in the
    outbox exactly the bytes `engine render` prints for it (fetching ones wait for the API: left out here)."""
    server = engine_server(with_segment=False)
    mappings = load_mappings(MAPPINGS)
    expected: dict[str, bytes] = {}
    for path in fixture_paths():
        envelope = json.loads(path.read_text())
        webhook = parse_webhook(path.read_bytes())
        mapping = mappings.get(webhook.event)
        assert server.post(envelope).status_code == 200, path.name
        if mapping is not None and not mapping.fetches:
            expected.update(mapping.render_json(webhook))
    wait_for(lambda: server.health()["outbox"]["pending"] >= len(expected), timeout=30, what="every message")
    outbox = SqliteOutbox(server.db)
    try:
        stored = {json.loads(body)["messageId"]: body for body in outbox.message_bodies()}
    finally:
        outbox.close()
    assert {k: stored.get(k) for k in expected} == expected
    # And `engine render` itself prints those messages, for a sample of each kind of object.
    for name in ("call.ended", "user.created.v2", "contact.created", "transcription.created--long_call"):
        printed = run_engine("render", str(FIXTURES / f"{name}.json")).json()
        assert printed and all(json.loads(stored[message["messageId"]]) == message for message in printed), name


def test_the_processing_process_is_restarted_when_it_dies_and_never_outlives_its_server(engine_server, segment):
    import os
    import signal

    from tests.harness import children_of

    server = engine_server()
    [child] = children_of(server.process.proc.pid)
    os.kill(child, signal.SIGKILL)  # the kernel's OOM killer, say
    wait_for(lambda: server.health()["processing"] == {"running": True, "restarts": 1}, what="a new processing process")
    envelope = call_webhook(4242)
    assert server.post(envelope).json() == {"status": "accepted"}
    segment.wait_for_ids(set(expected_ids(envelope)))
    [replacement] = children_of(server.process.proc.pid)
    os.kill(server.process.proc.pid, signal.SIGKILL)
    server.process.proc.wait()
    wait_for(lambda: not os.path.exists(f"/proc/{replacement}"), what="the orphaned child to exit")


def test_a_webhook_no_encoder_can_write_is_a_dead_letter_and_holds_up_nothing_behind_it(engine_server, segment):
    """A lone surrogate (valid JSON escape, not text) passes the gateway; mapping cannot encode it. It must become
    a dead letter on its own, not fail its batch again and again."""
    server = engine_server()
    poison = json.dumps(call_webhook(1)).replace('"direction": "inbound"', '"direction": "\\ud800"')
    assert '"\\ud800"' in poison
    answer = server.post(poison.encode())
    assert (answer.status_code, answer.json()) == (200, {"status": "accepted"})
    after = [call_webhook(n) for n in range(2, 12)]
    for envelope in after:
        assert server.post(envelope).status_code == 200
    segment.wait_for_ids({i for envelope in after for i in expected_ids(envelope)})
    status = run_engine("outbox", "status", "--dead", "--json", env={"ENGINE_DB": str(server.db)}).json()
    [letter] = status["dead"]
    assert "not valid Unicode" in letter["reason"] and status["unprocessed"] == 0


def test_processing_maps_with_the_settings_file_and_the_mappings_the_server_started_with(tmp_path, segment):
    """`engine --env-file FILE serve`: the processing process reads no settings of its own (a default .env or
    var/ of the working directory would be another outbox), and a mapping edited on disk while the server runs
    changes nothing until the next restart, even when the processing process is restarted meanwhile."""
    import os
    import shutil
    import signal
    import subprocess

    import requests

    from tests.conftest import ENGINE
    from tests.harness import TOKEN, WRITE_KEY, base_env, children_of, free_port

    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    settings_file = tmp_path / "prod.env"
    settings_file.write_text(
        f"AIRCALL_WEBHOOK_TOKEN={TOKEN}\nENGINE_DB={tmp_path / 'data' / 'outbox.sqlite3'}\n"
        f"ENGINE_MAPPINGS={mappings}\nSEGMENT_API_URL={segment.url}\nSEGMENT_WRITE_KEY={WRITE_KEY}\n"
    )
    port = free_port()
    args = [str(ENGINE), "--env-file", str(settings_file), "serve", "--port", str(port)]
    log = open(tmp_path / "engine.log", "wb")  # noqa: SIM115 - the child keeps it
    server = subprocess.Popen(args, env=base_env(), cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(f"{url}/healthz", timeout=1).ok, what="engine serve")

        def post(envelope: dict) -> None:
            answer = requests.post(f"{url}/webhooks/aircall", json=envelope, timeout=10)
            assert answer.json() == {"status": "accepted"}

        first = call_webhook(31)
        post(first)
        segment.wait_for_ids(set(expected_ids(first)))
        (mappings / "call.ended.yaml").write_text("aircall_event: call.ended\nsegment: [broken\n")
        [child] = children_of(server.pid)
        os.kill(child, signal.SIGKILL)
        wait_for(lambda: requests.get(f"{url}/healthz", timeout=1).json()["processing"]["restarts"] == 1,
                 what="a new processing process")  # fmt: skip
        second = call_webhook(32)
        post(second)
        segment.wait_for_ids(set(expected_ids(second)))
        assert not (tmp_path / "var").exists()
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)
        log.close()
