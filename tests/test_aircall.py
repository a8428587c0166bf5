"""`engine aircall connect|webhooks|numbers` and `engine backfill` through the CLI, against the fake Aircall API."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time

import pytest

from tests.conftest import ENGINE, ROOT, run_engine
from tests.harness import FakeAircall, base_env

DAY = 86_400
START = 1_700_006_400  # 2023-11-15T00:00:00Z


@pytest.fixture(scope="module")
def aircall_process(tmp_path_factory):
    fake = FakeAircall(tmp_path_factory.mktemp("aircall"))
    yield fake
    fake.stop()


@pytest.fixture
def aircall(aircall_process):
    aircall_process.control(reset=True, limit=1000, window=60)
    return aircall_process


@pytest.fixture
def env(aircall, tmp_path):
    return aircall.settings() | {"ENGINE_DB": str(tmp_path / "outbox.sqlite3")}


def outbox_events(db) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone():
        return []
    return [(event, json.loads(body)["timestamp"]) for event, body in conn.execute("SELECT event, body FROM messages")]


def test_connect_creates_the_webhook_prints_its_token_then_finds_it(engine, env, aircall, tmp_path):
    url = "https://bridge.example.com/webhooks/aircall"
    first = engine("aircall", "connect", "--url", url, env=env | {"AIRCALL_EVENTS": "call.ended,user.created"})
    assert first.code == 0, first.err
    token = first.out.strip()
    assert len(token) > 10 and "created webhook" in first.err
    again = engine("aircall", "connect", "--url", url, env=env)
    assert (again.code, again.out.strip()) == (0, token)
    assert "found webhook" in again.err and "events differ" in again.err
    assert aircall.stats()["webhooks"] == 1
    listing = engine("aircall", "webhooks", env=env)
    assert listing.code == 0 and url in listing.out and "2 events" in listing.out and token not in listing.out


def test_connect_writes_the_token_to_the_settings_file_keeping_the_old_one(engine, env, tmp_path):
    settings = tmp_path / "bridge.env"
    settings.write_text("SEGMENT_WRITE_KEY=wk\nAIRCALL_WEBHOOK_TOKEN=old-token\n")
    run = engine("aircall", "connect", "--url", "https://h/webhooks/aircall", "--write-env", str(settings), env=env)
    assert run.code == 0, run.err
    token = run.out.strip()
    assert settings.read_text() == f"SEGMENT_WRITE_KEY=wk\nAIRCALL_WEBHOOK_TOKEN={token},old-token\n"
    assert oct(settings.stat().st_mode & 0o777) == "0o600"


def test_numbers_lists_ids_and_digits(engine, env):
    run = engine("aircall", "numbers", env=env)
    assert run.code == 0
    assert run.out.strip() == "745821\t+33 1 76 36 06 95\tParis Support\tFR"


def test_bad_or_missing_credentials_are_a_clear_error(engine, env):
    bad = engine("aircall", "numbers", env=env | {"AIRCALL_API_TOKEN": "wrong"})
    assert bad.code == 2
    assert bad.err.strip() == (
        "engine: Aircall refused the API credentials (401): check AIRCALL_API_ID and AIRCALL_API_TOKEN"
    )
    missing = engine("backfill", "--since", "2023-11-15", env={k: v for k, v in env.items() if k != "AIRCALL_API_ID"})
    assert missing.code == 2 and "AIRCALL_API_ID" in missing.err


def test_backfill_queues_every_resource_as_its_final_event(engine, env, aircall, tmp_path):
    aircall.control(calls=120, start=START, spacing=1800)  # 2.5 days of calls
    run = engine("backfill", "--since", "2023-11-15", "--until", "2023-11-18", env=env)
    assert run.code == 0, run.err
    events = outbox_events(tmp_path / "outbox.sqlite3")
    counts = {e: sum(1 for x, _ in events if x == e) for e in {x for x, _ in events}}
    # 120 calls, 3 users (track + identify each), 2 contacts (track + identify each), 1 number.
    assert counts == {"call.ended": 120, "user.created": 6, "contact.created": 4, "number.created": 1}
    first_call = min(t for e, t in events if e == "call.ended")
    assert first_call == "2023-11-15T00:02:00.000Z"  # the call's own end, not the time of the backfill
    assert "calls\tfetched 120\tqueued 120" in run.out
    assert "rate limit: 0 waits" in run.out


def test_backfill_twice_queues_nothing_twice(engine, env, aircall, tmp_path):
    aircall.control(calls=60, start=START, spacing=3600)
    args = ("backfill", "--since", "2023-11-15", "--until", "2023-11-17", "--resources", "calls")
    assert engine(*args, env=env).code == 0
    aircall.control(tag_calls="follow-up")  # the calls have changed since: still the same events
    again = engine(*args, env=env)
    assert again.code == 0 and "calls\tfetched 48\tqueued 0" in again.out
    assert len(outbox_events(tmp_path / "outbox.sqlite3")) == 48


def test_backfill_respects_selection(engine, env, aircall, tmp_path):
    aircall.control(calls=10, start=START, spacing=600)
    run = engine("backfill", "--since", "2023-11-15", "--until", "2023-11-16",
                 env=env | {"AIRCALL_NUMBERS": "1", "AIRCALL_EVENTS": "call.ended,user.created"})  # fmt: skip
    assert run.code == 0, run.err
    assert "calls\tfetched 10\tqueued 0\tskipped 10" in run.out  # number 745821 is not active
    assert "contacts\tfetched 2\tqueued 0\tskipped 2" in run.out  # contact.created is not enabled
    assert {e for e, _ in outbox_events(tmp_path / "outbox.sqlite3")} == {"user.created"}


def test_backfill_resumes_after_an_interruption(engine, env, aircall, tmp_path):
    aircall.control(calls=200, start=START, spacing=1800)  # about 4 days: 4 windows of 48 calls
    args = ("backfill", "--since", "2023-11-15", "--until", "2023-11-20", "--resources", "calls")
    aircall.control(fail_after=4)  # Aircall breaks down after a few pages, for longer than the retries last
    broken = engine(*args, env=env)
    assert broken.code == 2 and "Aircall API answered 500" in broken.err
    partial = len(outbox_events(tmp_path / "outbox.sqlite3"))
    assert 0 < partial < 200
    aircall.control(fail_after=None)
    before = aircall.stats()["pages"]
    resumed = engine(*args, env=env)
    assert resumed.code == 0, resumed.err
    assert len(outbox_events(tmp_path / "outbox.sqlite3")) == 200
    assert aircall.stats()["pages"] - before < 12  # the finished windows were not fetched again
    assert f"queued {200 - partial}" in resumed.out


def test_backfill_waits_for_the_rate_limit_and_says_so(engine, env, aircall, tmp_path):
    aircall.control(calls=250, start=START, spacing=600, limit=1, window=1)  # 1 request a second
    run = engine("backfill", "--since", "2023-11-15", "--until", "2023-11-17", "--resources", "calls", env=env)
    assert run.code == 0, run.err
    assert len(outbox_events(tmp_path / "outbox.sqlite3")) == 250
    waits = int(run.out.split("rate limit: ")[1].split(" waits")[0])
    assert waits >= 3
    assert aircall.stats()["throttled"] == 0  # it waited for the reset instead of running into 429s
    assert "rate-limit waits" in run.err  # progress lines


def test_backfill_interrupted_with_ctrl_c_resumes_too(env, aircall, tmp_path):
    aircall.control(calls=300, start=START, spacing=1200, limit=2, window=1)
    args = [str(ENGINE), "backfill", "--since", "2023-11-15", "--until", "2023-11-20", "--resources", "calls"]
    proc = subprocess.Popen(args, env=base_env() | env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not outbox_events(tmp_path / "outbox.sqlite3") and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)
    proc.send_signal(2)  # SIGINT, as Ctrl-C
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"Traceback" not in err
    aircall.control(limit=1000)
    resumed = run_engine(*args[1:], env=env)
    assert resumed.code == 0, resumed.err
    assert len(outbox_events(tmp_path / "outbox.sqlite3")) == 300


def test_bad_dates_and_resources(engine, env):
    assert engine("backfill", "--since", "yesterday", env=env).err.strip() == (
        "engine: --since: 'yesterday' is not a date (YYYY-MM-DD) or an ISO 8601 time"
    )
    assert engine("backfill", "--since", "2024-01-02", "--until", "2024-01-01", env=env).code == 2
    bad = engine("backfill", "--since", "2024-01-01", "--resources", "calls,sms", env=env)
    assert bad.code == 2 and "sms" in bad.err
