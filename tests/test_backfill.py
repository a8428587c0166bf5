"""`engine backfill` against the fake Aircall API (tests/fake_aircall.py, a real HTTP server).

Most tests run the command in-process (`main(argv)`); the ones about a user's terminal and about a process
killed mid-page run the console script. Waiting for the rate limit is pretended: `PretendClock` moves the
engine's time and the fake's together, so an hour of rate-limited backfill takes a second.
"""

from __future__ import annotations

import functools
import io
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import time

import pytest

from engine import cli
from engine.aircall.api import AircallClient, Clock
from engine.cli import aircall as aircall_commands
from tests.conftest import ENGINE, MAPPINGS, ROOT, Run, run_engine
from tests.fake_aircall import PretendClock
from tests.harness import FakeAircall, base_env, wait_for

DAY = 86_400
START = 1_700_006_400  # 2023-11-15T00:00:00Z
SINCE_2025 = 1_735_689_600  # 2025-01-01T00:00:00Z


@pytest.fixture
def db(tmp_path):
    return tmp_path / "outbox.sqlite3"


@pytest.fixture
def env(aircall, db):
    return aircall.settings() | {"ENGINE_DB": str(db), "ENGINE_MAPPINGS": str(MAPPINGS)}


@pytest.fixture
def backfill(env, aircall, monkeypatch, capsys, tmp_path):
    """backfill(*args, clock=None, **settings) -> Run: `engine backfill ARGS` in-process, pretending to wait."""
    for name in [n for n in os.environ if n.startswith(("AIRCALL_", "SEGMENT_", "ENGINE_"))]:
        monkeypatch.delenv(name)

    def run(*args: str, clock: Clock | None = None, **settings: str) -> Run:
        with monkeypatch.context() as patch:
            for name, value in (env | settings).items():
                patch.setenv(name, value)
            clock = clock or PretendClock(aircall)
            patch.setattr(aircall_commands, "AircallClient", functools.partial(AircallClient, clock=clock))
            settings_file = tmp_path / "empty.env"  # not the .env of the working directory: only the environment
            settings_file.touch()
            code = cli.main(["--env-file", str(settings_file), "backfill", *args])
        out, err = capsys.readouterr()
        return Run(code, out, err)

    return run


def outbox_events(db) -> list[tuple[str, str]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(db)
    if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'messages'").fetchone():
        return []
    return [(event, json.loads(body)["timestamp"]) for event, body in conn.execute("SELECT event, body FROM messages")]


def counts(db) -> dict[str, int]:
    events = [event for event, _ in outbox_events(db)]
    return {event: events.count(event) for event in sorted(set(events))}


def requests_made(aircall: FakeAircall) -> int:
    return aircall.stats()["requests"]


# -- what it costs ---------------------------------------------------------------------------------------------


def test_two_years_of_a_small_account_take_nine_requests_and_bring_every_user_and_number(aircall, env, db):
    """The issue's account: 300 calls since 2025-01-01, 20 users, 50 contacts, 5 numbers, as a new user runs it."""
    now = int(time.time())
    aircall.control(
        calls={"count": 300, "start": SINCE_2025 + 3600, "spacing": (now - SINCE_2025 - 7200) // 300},
        users={"count": 20, "start": SINCE_2025 - 400 * DAY, "spacing": DAY},  # the team, there before 2025
        contacts={"count": 50, "start": SINCE_2025 - 100 * DAY, "spacing": 4 * DAY},
        numbers={"count": 5, "start": SINCE_2025 - 500 * DAY, "spacing": 7 * DAY},
    )
    began = time.monotonic()
    run = run_engine("backfill", "--since", "2025-01-01", env=env)
    seconds = time.monotonic() - began
    assert run.code == 0, run.err
    assert requests_made(aircall) == 9  # 6 pages of calls, one page each of users, contacts and numbers
    assert seconds < 15
    # Users and contacts are a track and an identify each; every object arrives, whenever it was created.
    # Users as the V2 event Aircall asks for (landing in Segment as user.created, like V1's).
    assert counts(db) == {"call.ended": 300, "contact.created": 100, "number.created": 5, "user.created.v2": 40}
    first_user = min(t for e, t in outbox_events(db) if e == "user.created.v2")
    assert first_user == "2023-11-28T00:00:00.000Z"  # stamped with its own creation, long before --since
    plan = run.err.splitlines()[:2]
    assert plan[0].startswith("backfill: calls 300 (2025-01-01 to ")
    assert plan[0].endswith("), users 20, contacts 50, numbers 5")
    assert plan[1].startswith("about 9 requests, 4 made: under a minute at 45 requests a minute, leaving 955 of ")


def test_a_day_over_the_ceiling_is_split_and_every_call_arrives_once(aircall, backfill, db):
    aircall.control(
        calls=[
            {"count": 60, "start": START, "spacing": 12 * 3600},  # a month of quiet days...
            {"count": 10_800, "start": START + 10 * DAY, "spacing": 8},  # ...and one campaign day
        ]
    )
    run = backfill("--since", "2023-11-15", "--until", "2023-12-15", "--resources", "calls")
    assert run.code == 0, run.err
    stats = aircall.stats()
    assert stats["past_ceiling"] == 0  # never asked for a page Aircall would refuse
    assert stats["distinct"]["calls"] == 10_860 and counts(db) == {"call.ended": 10_860}
    assert 10_860 / 50 < stats["requests"] <= 10_860 / 50 + 10  # the pages, and a probe for each split
    assert "past Aircall's 10,000: in 2 parts" in run.err


def test_a_total_capped_at_the_ceiling_still_splits(aircall, backfill, db):
    """Should Aircall's meta.total stop at 10,000 too, a listing that reaches it is taken to be over it."""
    aircall.control(cap_total=True, calls={"count": 10_400, "start": START, "spacing": 8})
    run = backfill("--since", "2023-11-15", "--until", "2023-11-17", "--resources", "calls", AIRCALL_NUMBERS="1")
    assert run.code == 0, run.err
    stats = aircall.stats()
    assert stats["past_ceiling"] == 0 and stats["distinct"]["calls"] == 10_400
    assert (
        "calls\tfetched 10400\tqueued 0\talready queued 0\tskipped 10400" in run.out
    )  # inactive number: listed, not rendered
    assert stats["requests"] <= 10_400 / 50 + 4


def test_without_a_total_a_listing_that_reaches_the_ceiling_continues_after_its_newest_call(aircall, backfill, db):
    aircall.control(no_total=True, calls={"count": 10_400, "start": START, "spacing": 8})
    run = backfill("--since", "2023-11-15", "--until", "2023-11-17", "--resources", "calls", AIRCALL_NUMBERS="1")
    assert run.code == 0, run.err
    stats = aircall.stats()
    assert stats["past_ceiling"] == 0 and stats["distinct"]["calls"] == 10_400
    assert stats["requests"] == 209  # 200 pages, then the rest from the second of the last call seen


def test_an_api_that_ignores_from_and_to_costs_one_listing_and_queues_only_the_range(aircall, backfill, db):
    aircall.control(
        ignore_range=True,
        calls=[
            {"count": 200, "start": START - 30 * DAY, "spacing": 3600},  # before the range
            {"count": 300, "start": START, "spacing": 600},  # in it
            {"count": 400, "start": START + 10 * DAY, "spacing": 600},  # after it
        ],
    )
    run = backfill("--since", "2023-11-15", "--until", "2023-11-20", "--resources", "calls")
    assert run.code == 0, run.err
    assert counts(db) == {"call.ended": 300}
    assert "calls: Aircall ignored from/to; listing every one and keeping those of the range" in run.err
    assert requests_made(aircall) == 11  # 500 listed up to the range's end, and one page past it


# -- interrupted and continued --------------------------------------------------------------------------------


def test_killed_in_the_middle_of_a_page_it_continues_at_that_page_and_queues_nothing_twice(aircall, env, tmp_path):
    aircall.control(calls={"count": 10_200, "start": START, "spacing": 8})  # past the ceiling: split in two
    args = ["backfill", "--since", "2023-11-15", "--until", "2023-11-17", "--resources", "calls", "--rate", "1000"]
    whole = run_engine(*args, env=env | {"ENGINE_DB": str(tmp_path / "whole.sqlite3")})
    assert whole.code == 0, whole.err
    uninterrupted = requests_made(aircall)

    page = random.randint(1, uninterrupted - 1)  # the first is the probe that splits the range
    aircall.control(stall_after=uninterrupted + page)  # the page after it hangs: the process dies waiting
    db = tmp_path / "killed.sqlite3"
    proc = subprocess.Popen([str(ENGINE), *args], env=base_env() | env | {"ENGINE_DB": str(db)}, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    wait_for(lambda: aircall.stats()["stalled"], timeout=60, what=f"the backfill to reach page {page + 1}")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    aircall.control(stall_after=None)
    before, partial = requests_made(aircall), len(outbox_events(db))
    assert partial < 10_200

    resumed = run_engine(*args, env=env | {"ENGINE_DB": str(db)})
    assert resumed.code == 0, resumed.err
    extra = requests_made(aircall) - before + page + 1 - uninterrupted
    assert extra <= 2, f"killed at page {page + 1}: {extra} requests more than an uninterrupted run"
    assert len(outbox_events(db)) == 10_200
    assert f"calls\tfetched {10_200 - partial}\tqueued {10_200 - partial}\t" in resumed.out  # nothing twice
    assert "continuing an interrupted run" in resumed.err


def test_interrupted_with_ctrl_c_it_says_so_and_continues(aircall, env, db):
    aircall.control(calls={"count": 600, "start": START, "spacing": 300}, stall_after=4)
    args = [str(ENGINE), "backfill", "--since", "2023-11-15", "--until", "2023-11-20", "--resources", "calls"]
    proc = subprocess.Popen(args, env=base_env() | env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    wait_for(lambda: aircall.stats()["stalled"], timeout=30, what="the backfill to stall")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"Traceback" not in err
    assert b"backfill interrupted: what was listed is queued; the same command continues at the next page" in err
    assert len(outbox_events(db)) == 200
    aircall.control(stall_after=None)
    resumed = run_engine(*args[1:], env=env)
    assert resumed.code == 0, resumed.err
    assert "calls\tfetched 400\tqueued 400\t" in resumed.out and len(outbox_events(db)) == 600


def test_an_outage_stops_it_and_the_same_command_without_until_continues_that_run(aircall, backfill, db):
    aircall.control(calls={"count": 300, "start": int(time.time()) - 5 * DAY, "spacing": 1200})
    since = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 6 * DAY))
    aircall.control(fail_after=3)  # Aircall breaks down after a few pages, for longer than the retries last
    broken = backfill("--since", since, "--resources", "calls", clock=PretendClock(aircall))
    assert broken.code == 2
    assert broken.err.strip().endswith(
        "Aircall API answered 500 7 times; what was listed is queued, and the same command continues at the next page"
    )
    assert len(outbox_events(db)) == 150
    aircall.control(fail_after=None)
    before = requests_made(aircall)
    resumed = backfill("--since", since, "--resources", "calls")
    assert resumed.code == 0, resumed.err
    assert requests_made(aircall) - before == 3  # pages 4 to 6 of the same run: its end was kept
    assert "calls\tfetched 150\tqueued 150\t" in resumed.out and len(outbox_events(db)) == 300


# -- a share of the quota ---------------------------------------------------------------------------------------


def test_rate_keeps_to_its_share_of_any_minute_and_says_how_long_at_the_start(aircall, backfill, db):
    aircall.control(limit=60, calls={"count": 5_000, "start": START, "spacing": 30})  # 100 pages
    clock = PretendClock(aircall)
    run = backfill("--since", "2023-11-15", "--until", "2023-11-17", "--resources", "calls", "--rate", "20",
                   clock=clock, AIRCALL_EVENTS="user.created")  # fmt: skip
    assert run.code == 0, run.err
    arrivals = aircall.stats()["arrivals"]
    assert len(arrivals) == 100
    assert max(sum(1 for t in arrivals if a <= t < a + 60) for a in arrivals) == 20  # never more in a minute
    assert aircall.stats()["throttled"] == 0
    assert re.search(r"about 100 requests, 1 made: about 4 min 0[12] s at 20 requests a minute, "
                     r"leaving 40 of Aircall's 60 a minute to the account's other integrations", run.err)  # fmt: skip
    waits = [wait for wait in clock.waits if wait >= 1]  # and milliseconds between requests that follow a wait
    assert len(waits) == 4 and 235 < sum(clock.waits) <= 242 and "rate limit: 4 waits, 2" in run.out


def test_aircalls_own_count_and_its_429s_are_honoured(aircall, backfill, db):
    # Aircall allows 10 a minute here, and other integrations take one request after each of ours: what the last
    # answer said remains is spent before the next request, which gets a 429.
    aircall.control(limit=10, others=1, calls={"count": 1_000, "start": START, "spacing": 60})  # 20 pages
    clock = PretendClock(aircall)
    run = backfill("--since", "2023-11-15", "--until", "2023-11-17", "--resources", "calls", clock=clock,
                   AIRCALL_EVENTS="user.created")  # fmt: skip
    assert run.code == 0, run.err
    stats = aircall.stats()
    assert stats["distinct"]["calls"] == 1_000
    assert 0 < stats["throttled"] <= 5  # one for each minute the others got ahead
    assert all(wait <= 62 for wait in clock.waits)  # until Aircall's reset (and a second), never longer
    assert f"{stats['throttled']} answered 429" in run.out


# -- what it sends ---------------------------------------------------------------------------------------------


def test_every_resource_arrives_as_its_final_event_stamped_with_its_own_time(aircall, backfill, db):
    aircall.control(calls=120, start=START, spacing=1800)  # 2.5 days of calls, 3 users, 2 contacts, 1 number
    run = backfill("--since", "2023-11-15", "--until", "2023-11-18")
    assert run.code == 0, run.err
    assert counts(db) == {"call.ended": 120, "contact.created": 4, "number.created": 1, "user.created.v2": 6}
    first_call = min(t for e, t in outbox_events(db) if e == "call.ended")
    assert first_call == "2023-11-15T00:02:00.000Z"  # the call's own end, not the time of the backfill
    assert (
        "calls\tfetched 120\tqueued 120\talready queued 0\tskipped 0\tdead-lettered 0\tmessages 120\trequests 3"
        in run.out
    )
    assert "rate limit: 0 waits, 0.0 s of 6 requests, 0 answered 429" in run.out


def test_twice_queues_nothing_twice(aircall, backfill, db):
    aircall.control(calls=60, start=START, spacing=3600)
    args = ("--since", "2023-11-15", "--until", "2023-11-17", "--resources", "calls")
    assert backfill(*args).code == 0
    aircall.control(tag_calls="follow-up")  # the calls have changed since: still the same events
    again = backfill(*args)
    # Said as what it is: every call listed again, each already queued (before: "queued 0, skipped 0").
    assert again.code == 0 and "calls\tfetched 48\tqueued 0\talready queued 48\tskipped 0" in again.out
    assert "\tmessages 0\t" in again.out
    assert len(outbox_events(db)) == 48


def test_selection_applies(aircall, backfill, db):
    aircall.control(calls=10, start=START, spacing=600)
    run = backfill("--since", "2023-11-15", "--until", "2023-11-16",
                   AIRCALL_NUMBERS="1", AIRCALL_EVENTS="call.ended,user.created")  # fmt: skip
    assert run.code == 0, run.err
    assert "calls\tfetched 10\tqueued 0\talready queued 0\tskipped 10" in run.out  # number 745821 is not active
    assert "contacts\tfetched 2\tqueued 0\talready queued 0\tskipped 2" in run.out  # contact.created is not enabled
    # AIRCALL_EVENTS keeps the V1 user.created and not its V2: a team still on V1 gets its users as V1.
    assert {e for e, _ in outbox_events(db)} == {"user.created"}


def test_contacts_can_be_bounded_for_accounts_with_very_many(aircall, backfill, db):
    aircall.control(contacts=[{"count": 30, "start": START - 30 * DAY, "spacing": DAY}])
    run = backfill("--since", "2023-11-15", "--resources", "contacts", "--contacts-since", "2023-11-01")
    assert run.code == 0, run.err
    assert (
        "contacts\tfetched 14\tqueued 14\talready queued 0\tskipped 0\tdead-lettered 0\tmessages 28" in run.out
    )  # those created from 2023-11-01 on
    assert "backfill: contacts 14 (since 2023-11-01)" in run.err


# -- what a person sees ---------------------------------------------------------------------------------------


def test_off_a_terminal_progress_is_plain_lines(aircall, backfill, db):
    aircall.control(calls=120, start=START, spacing=1800)
    run = backfill("--since", "2023-11-15", "--until", "2023-11-18")
    assert "\r" not in run.err and "\x1b" not in run.err
    assert run.err.splitlines() == [
        "backfill: calls 120 (2023-11-15 to 2023-11-18), users 3, contacts 2, numbers 1",
        "about 6 requests, 4 made: under a minute at 45 requests a minute, leaving 955 of Aircall's 1000 a minute "
        "to the account's other integrations",
        "calls: done: 120 listed; 3 requests; rate-limit waits 0 (0 s); "
        "120 queued, 0 already queued, 0 skipped, 0 dead-lettered",
        "users: done: 3 listed; 1 request; rate-limit waits 0 (0 s); "
        "3 queued, 0 already queued, 0 skipped, 0 dead-lettered",
        "contacts: done: 2 listed; 1 request; rate-limit waits 0 (0 s); "
        "2 queued, 0 already queued, 0 skipped, 0 dead-lettered",
        "numbers: done: 1 listed; 1 request; rate-limit waits 0 (0 s); "
        "1 queued, 0 already queued, 0 skipped, 0 dead-lettered",
    ]


def test_on_a_terminal_each_resource_has_a_live_line(aircall, backfill, db, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setenv("COLUMNS", "200")
    aircall.control(calls={"count": 300, "start": START, "spacing": 600})
    run = backfill("--since", "2023-11-15", "--until", "2023-11-18", "--resources", "calls")
    assert run.code == 0
    shown = terminal.getvalue()
    assert (
        "\rcalls: 50 of 300 listed; 1 of 6 requests; under a minute left; rate-limit waits 0 (0 s); 50 queued" in shown
    )
    assert shown.endswith("\x1b[K\r\x1b[Kcalls: done: 300 listed; 6 requests; rate-limit waits 0 (0 s); 300 queued, "
                          "0 already queued, 0 skipped, 0 dead-lettered\n")  # fmt: skip


def test_bad_dates_resources_and_rates_are_one_line_errors(backfill, engine, env):
    assert backfill("--since", "yesterday").err.strip() == (
        "engine: --since: 'yesterday' is not a date (YYYY-MM-DD) or an ISO 8601 time"
    )
    assert backfill("--since", "2024-01-02", "--until", "2024-01-01").code == 2
    future = backfill("--since", "9999-12-31")
    assert (future.code, future.err) == (
        2,
        "engine: --since: 9999-12-31 is in the future; nothing has happened there yet\n",
    )
    bad = backfill("--since", "2024-01-01", "--resources", "calls,sms")
    assert bad.code == 2 and "sms" in bad.err
    rate = engine("backfill", "--since", "2024-01-01", "--rate", "0", env=env)
    assert rate.code == 2 and "--rate: '0' is not a whole number of requests a minute, 1 or more" in rate.err


# -- the outbox keeps where a backfill stands ---------------------------------------------------------------------


@pytest.fixture
def store(outbox):
    return outbox


def test_the_outbox_keeps_an_unfinished_run_until_it_finishes(store):
    assert store.backfill_start("calls", 100, 200) == (100, None)
    store.backfill_save("calls", 100, 200, '{"page": 3}', 150, 150, 150)
    assert store.backfill_start("calls", 100, 200) == (150, '{"page": 3}')
    assert store.backfill_unfinished_until("calls", 100) == 200
    assert store.backfill_unfinished_until("calls", 101) is None
    store.backfill_finished("calls", 100, 200)
    assert store.backfill_unfinished_until("calls", 100) is None
    assert store.backfill_start("calls", 100, 200) == (100, None)  # finished: a new run starts afresh


def test_users_backfilled_as_v1_then_again_as_v2_are_queued_once(aircall, backfill, db):
    # A team backfills while on V1 user events, moves to V2 (AIRCALL_EVENTS=all), and runs the backfill again:
    # the same users at the same time are the same news, whichever version announced them.
    aircall.control(calls=10, start=START, spacing=600)
    args = ("--since", "2023-11-15", "--until", "2023-11-16", "--resources", "users")
    first = backfill(*args, AIRCALL_EVENTS="user.created")
    assert (
        first.code == 0
        and "users\tfetched 3\tqueued 3\talready queued 0\tskipped 0\tdead-lettered 0\tmessages 6" in first.out
    )
    again = backfill(*args)
    assert again.code == 0 and "users\tfetched 3\tqueued 0\talready queued 3" in again.out
    assert counts(db) == {"user.created": 6}


def test_users_come_as_v1_from_a_mappings_folder_without_the_v2_events(aircall, backfill, db, tmp_path):
    # Mappings of a team's own from before the V2 events: its users arrive as the V1 event its folder maps.
    mappings = tmp_path / "own-mappings"
    shutil.copytree(MAPPINGS, mappings)
    for path in mappings.glob("user.*.v2.yaml"):
        path.unlink()
    aircall.control(calls=10, start=START, spacing=600)
    run = backfill("--since", "2023-11-15", "--until", "2023-11-16", "--resources", "users",
                   ENGINE_MAPPINGS=str(mappings))  # fmt: skip
    assert run.code == 0, run.err
    assert "users\tfetched 3\tqueued 3\talready queued 0\tskipped 0" in run.out
    assert counts(db) == {"user.created": 6}


@pytest.mark.parametrize("order", [{"retry_after": "99999999999"}, {"reset_header": "99999999999"},
                                   {"reset_header": "1e999"}, {"reset_header": "nan"}])  # fmt: skip
def test_a_wait_an_answer_asks_for_is_capped_and_said_in_a_plain_line(aircall, backfill, db, order):
    aircall.control(calls=200, start=START, spacing=600, limit=2, **order)  # 4 pages: a 429 after two requests
    clock = PretendClock(aircall)
    run = backfill("--since", "2023-11-15", "--until", "2023-11-17", "--resources", "calls", clock=clock)
    assert run.code == 0, run.err
    assert "calls\tfetched 200\tqueued 200" in run.out
    assert clock.waits and max(clock.waits) <= 301  # five minutes at most, whatever was asked
    # A line of its own: stderr is not a terminal here, as in a log.
    assert re.search(r"^waiting [15] min 0[01] s for Aircall's rate limit$", run.err, re.M), run.err


@pytest.mark.parametrize("garbage", ["html", "cut", "list", "strings", "huge_total"])
def test_a_page_that_is_not_a_page_is_one_line_and_the_same_command_continues(aircall, backfill, db, garbage):
    aircall.control(calls=400, start=START, spacing=300, garbage=garbage)  # 8 pages; the first answer broken
    args = ("--since", "2023-11-15", "--until", "2023-11-17", "--resources", "calls")
    broken = backfill(*args)
    assert broken.code == 2, broken.err
    [line] = [text for text in broken.err.splitlines() if text.startswith("engine: ")]
    assert "Traceback" not in broken.err and "continues at the next page" in line
    again = backfill(*args)
    assert again.code == 0, again.err
    events = outbox_events(db)
    assert len(events) == len(set(events)) == 400  # every call of the two days, each once
