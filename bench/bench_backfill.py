"""Backfill of 10,000 calls against the fake Aircall API at Aircall's real rate limit (60 requests a minute).

    python bench/bench_backfill.py [--calls 10000] [--limit 60]

Prints the wall time, how much of it was spent waiting on the rate limit, and the time that was not (the
engine's own work plus the fake's answers), as a share of the whole.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.harness import FakeAircall, base_env  # noqa: E402

START = 1_700_006_400  # 2023-11-15T00:00:00Z


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--limit", type=int, default=60, help="requests a minute")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    aircall = FakeAircall(tmp)
    try:
        spacing = 86_400 // 1000  # 1,000 calls a day: 20 pages a day
        aircall.control(calls=args.calls, start=START, spacing=spacing, limit=args.limit, window=60)
        days = args.calls * spacing // 86_400 + 1
        until = time.strftime("%Y-%m-%d", time.gmtime(START + days * 86_400))
        env = base_env() | aircall.settings() | {"ENGINE_DB": str(tmp / "outbox.sqlite3")}
        began = time.perf_counter()
        run = subprocess.run(
            [str(Path(sys.executable).parent / "engine"), "backfill", "--since", "2023-11-15", "--until", until,
             "--resources", "calls"],
            env=env, cwd=ROOT, capture_output=True, text=True, check=True,
        )  # fmt: skip
        seconds = time.perf_counter() - began
        stats = aircall.stats()
    finally:
        aircall.stop()
    waits, waited, requests_made = re.search(
        r"rate limit: (\d+) waits, ([\d.]+) s of (\d+) requests", run.stdout
    ).groups()
    waited = float(waited)
    print(f"# backfill of {args.calls:,} calls, fake Aircall at {args.limit} requests/minute")
    print(run.stdout.strip())
    print(f"wall time {seconds:.1f} s; waiting on the rate limit {waited:.1f} s ({waited / seconds:.0%}); "
          f"the rest {seconds - waited:.1f} s ({(seconds - waited) / seconds:.0%}); {requests_made} requests, "
          f"{waits} waits, {stats['throttled']} answered 429")  # fmt: skip


if __name__ == "__main__":
    main()
