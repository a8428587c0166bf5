"""Backfill against the fake Aircall API: what it costs in requests and time, and what an interruption adds.

    python bench/bench_backfill.py [--calls 100000] [--days 30] [--rate 45] [--trials 3]

1. sparse: the account of issue 11 over two years (300 calls, 20 users, 50 contacts, 5 numbers: 375 objects),
   `engine backfill --since` as a user runs it, real time: requests and wall time.
2. month: `--calls` calls in `--days` days, at `--rate` requests a minute against Aircall's 60, in-process with
   a pretend clock (the engine's and the fake's move together instead of sleeping): requests, the time at that
   rate (the wall time plus the waits the rate limiter accounted for), 429s, the most requests in any minute,
   and the wall time of the run itself (the engine's work and the fake's answers).
3. interrupted: the same month, killed with SIGKILL in the middle of a random page (the fake holds that
   request), then run again: requests beyond those of the uninterrupted run, objects listed twice, messages
   queued twice. `--trials` times.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine import cli  # noqa: E402
from engine.aircall.api import AircallClient  # noqa: E402
from engine.cli import aircall as aircall_commands  # noqa: E402
from tests.fake_aircall import PretendClock  # noqa: E402
from tests.harness import FakeAircall, base_env, wait_for  # noqa: E402

DAY = 86_400
ENGINE = Path(sys.executable).parent / "engine"
START = 1_700_006_400  # 2023-11-15T00:00:00Z


def messages(db: Path) -> int:
    return sqlite3.connect(db).execute("SELECT count(*) FROM messages").fetchone()[0]


def summary(out: str, name: str = "calls") -> dict[str, int]:
    found = re.search(rf"^{name}\tfetched (\d+)\tqueued (\d+)\t.*\trequests (\d+)$", out, re.M)
    return dict(zip(("fetched", "queued", "requests"), map(int, found.groups()), strict=True)) if found else {}


def sparse(aircall: FakeAircall, tmp: Path) -> None:
    now = int(time.time())
    since = 1_735_689_600  # 2025-01-01
    aircall.control(
        reset=True,
        calls={"count": 300, "start": since + 3600, "spacing": (now - since - 7200) // 300},
        users={"count": 20, "start": since - 400 * DAY, "spacing": DAY},
        contacts={"count": 50, "start": since - 100 * DAY, "spacing": 4 * DAY},
        numbers={"count": 5, "start": since - 500 * DAY, "spacing": 7 * DAY},
    )
    env = base_env() | aircall.settings() | {"ENGINE_DB": str(tmp / "sparse.sqlite3")}
    began = time.perf_counter()
    run = subprocess.run([str(ENGINE), "backfill", "--since", "2025-01-01"], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=True)  # fmt: skip
    seconds = time.perf_counter() - began
    print(f"## sparse: 375 objects since 2025-01-01 ({(now - since) // DAY} days)")
    print(run.stderr.strip())
    sent = messages(tmp / "sparse.sqlite3")
    print(f"requests {aircall.stats()['requests']}; messages {sent}; wall {seconds:.2f} s\n")


def month(aircall: FakeAircall, tmp: Path, calls: int, days: int, rate: int) -> tuple[list[str], int]:
    spacing = days * DAY // calls
    aircall.control(reset=True, limit=60, window=60, calls={"count": calls, "start": START, "spacing": spacing})
    until = time.strftime("%Y-%m-%d", time.gmtime(START + days * DAY))
    args = ["backfill", "--since", "2023-11-15", "--until", until, "--resources", "calls"]
    db = tmp / "month.sqlite3"
    os.environ.update(aircall.settings() | {"ENGINE_DB": str(db), "ENGINE_MAPPINGS": str(ROOT / "mappings")})
    clock = PretendClock(aircall)
    aircall_commands.AircallClient = functools.partial(AircallClient, clock=clock)  # type: ignore[misc]
    out = io.StringIO()
    began = time.perf_counter()
    with contextlib.redirect_stdout(out):
        env_file = tmp / "empty.env"  # only the environment: not a .env of the working directory
        env_file.touch()
        code = cli.main(["--env-file", str(env_file), *args, "--rate", str(rate)])
    wall = time.perf_counter() - began
    aircall_commands.AircallClient = AircallClient  # type: ignore[misc]
    assert code == 0, out.getvalue()
    stats = aircall.stats()
    arrivals = stats["arrivals"]
    busiest = max(sum(1 for t in arrivals[i : i + 200] if t < a + 60) for i, a in enumerate(arrivals))
    waited = sum(clock.waits)
    got = summary(out.getvalue())
    print(f"## month: {calls:,} calls in {days} days, --rate {rate} against Aircall's 60 a minute")
    print(f"requests {stats['requests']:,} ({stats['requests'] / (calls / 50) - 1:+.1%} on {calls // 50:,}); "
          f"{got['fetched']:,} calls listed, {got['queued']:,} queued; 429s {stats['throttled']}; most requests in "
          f"any minute {busiest}")  # fmt: skip
    print(f"time at {rate}/min: {(wall + waited) / 60:.1f} min (waits {waited / 60:.1f} min, work {wall:.1f} s); "
          f"wall time of the run against the fake {wall:.1f} s\n")  # fmt: skip
    return args, stats["requests"]


def interrupted(aircall: FakeAircall, tmp: Path, args: list[str], uninterrupted: int, trials: int) -> None:
    print(f"## interrupted at a random page and run again ({trials} trials; uninterrupted: {uninterrupted} requests)")
    print("| killed in page | extra requests | objects listed twice | messages queued twice |")
    print("|---:|---:|---:|---:|")
    total_calls = None
    for trial in range(trials):
        db = tmp / f"killed-{trial}.sqlite3"
        env = base_env() | aircall.settings() | {"ENGINE_DB": str(db)}
        page = random.randint(1, uninterrupted - 1)
        before = aircall.stats()["requests"]
        aircall.control(stall_after=aircall.stats()["pages"] + aircall.stats()["stalled"] + page)
        proc = subprocess.Popen([str(ENGINE), *args, "--rate", "100000"], env=env, cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        wait_for(lambda held=trial: aircall.stats()["stalled"] > held, timeout=600, what="the stalled page")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        aircall.control(stall_after=None)
        first = aircall.stats()["requests"] - before
        partial = messages(db)
        resumed = subprocess.run([str(ENGINE), *args, "--rate", "100000"], env=env, cwd=ROOT, capture_output=True,
                                 text=True, check=True)  # fmt: skip
        second = aircall.stats()["requests"] - before - first
        got = summary(resumed.stdout)
        total_calls = total_calls or messages(tmp / "month.sqlite3")
        listed_twice = partial + got["fetched"] - total_calls
        queued_twice = partial + got["queued"] - messages(db)
        assert messages(db) == total_calls
        print(f"| {page + 1} of {uninterrupted} | {first + second - uninterrupted} | {listed_twice} | {queued_twice} |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rate", type=int, default=45, help="requests a minute")
    parser.add_argument("--trials", type=int, default=3)
    args = parser.parse_args()
    for name in [n for n in os.environ if n.startswith(("AIRCALL_", "SEGMENT_", "ENGINE_"))]:
        del os.environ[name]
    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    aircall = FakeAircall(tmp)
    try:
        aircall.control(reset=True, limit=1000)
        sparse(aircall, tmp)
        month_args, requests_ = month(aircall, tmp, args.calls, args.days, args.rate)
        aircall.control(limit=1_000_000, advance=3600)  # the kills and re-runs go at full speed
        if args.trials:
            interrupted(aircall, tmp, month_args, requests_, args.trials)
    finally:
        aircall.stop()


if __name__ == "__main__":
    main()
