"""Replicas on PostgreSQL, against one replica on SQLite, in the same run on the same machine.

    python bench/bench_postgres.py [--count 3000] [--drain 20000]

ingest: concurrency 32 over keep-alive connections (split evenly between replicas), realistic call webhooks,
no write key (the webhook path alone). drain: messages queued in PostgreSQL, delivered into the fake Segment
by one replica, then by two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_server import call_body, engine_server, machine, queued_messages, stop  # noqa: E402
from load import LoadResult, run_load  # noqa: E402

from engine.aircall.envelope import webhook_from_json  # noqa: E402
from engine.outbox import NewMessage, open_outbox, stored_webhook  # noqa: E402
from tests.harness import WRITE_KEY, FakeSegment, free_port, wait_for  # noqa: E402
from tests.postgres import Cluster  # noqa: E402


async def split_load(ports: list[int], bodies: list[bytes], total: int) -> LoadResult:
    share = total // len(ports)
    results = await asyncio.gather(*(
        run_load("127.0.0.1", port, "/webhooks/aircall", lambda n, o=i * share: bodies[o + n], share,
                 concurrency=32 // len(ports))
        for i, port in enumerate(ports)
    ))  # fmt: skip
    seconds = max(r.seconds for r in results)
    latencies = [x for r in results for x in r.latencies]
    statuses: dict[int, int] = {}
    for r in results:
        for status, n in r.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    return LoadResult(len(latencies), seconds, latencies, statuses)


def ingest(cluster: Cluster, count: int) -> None:
    bodies = [call_body(n) for n in range((count + 400) * 3)]
    rows = []
    for label, settings_list in (
        ("1 replica, SQLite", [{}]),
        ("1 replica, PostgreSQL", [{"ENGINE_DB": cluster.new_database()}]),
    ):
        rows.append((label, settings_list))
    url = cluster.new_database()
    rows.append(("2 replicas, PostgreSQL", [{"ENGINE_DB": url}, {"ENGINE_DB": url}]))
    print(f"# ingest, {machine()}; client on the same machine, concurrency 32")
    print(f"{'setup':<26}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    offset = 0
    for label, settings_list in rows:
        procs, ports = [], []
        for settings in settings_list:
            tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
            port = free_port()
            procs.append(engine_server(tmp, port, **settings))
            ports.append(port)
        try:
            asyncio.run(split_load(ports, bodies[offset:], 400))  # warm-up
            result = asyncio.run(split_load(ports, bodies[offset + 400 :], count))
            assert set(result.statuses) == {200}, result.statuses
        finally:
            for proc in procs:
                stop(proc)
        offset += count + 400
        s = result.summary()
        print(f"{label:<26}{s['rate']:>9,.0f}{s['p50_ms']:>9.2f}{s['p99_ms']:>9.2f}")


def drain(cluster: Cluster, count: int) -> None:
    messages = queued_messages(count)
    print(f"# drain of {count:,} messages from PostgreSQL into the fake Segment, {machine()}")
    for replicas in (1, 2):
        url = cluster.new_database()
        outbox = open_outbox(url)
        for start_at in range(0, len(messages), 2000):
            webhook = stored_webhook(webhook_from_json(json.loads(call_body(start_at))))
            chunk = messages[start_at : start_at + 2000]
            outbox.enqueue([(webhook, [NewMessage(i, "call.ended", body) for i, body in chunk])])
        outbox.close()
        segment = FakeSegment(Path(tempfile.mkdtemp(prefix="bench-pg-")))
        procs = []
        try:
            began = time.perf_counter()
            for _ in range(replicas):
                procs.append(engine_server(Path(tempfile.mkdtemp(prefix="bench-pg-")), free_port(), ENGINE_DB=url,
                                           SEGMENT_API_URL=segment.url, SEGMENT_WRITE_KEY=WRITE_KEY))  # fmt: skip
            wait_for(lambda s=segment: requests.get(f"{s.url}/_count", timeout=10).json()["messages"] >= count,
                     600, 0.2, what="drain")  # fmt: skip
            seconds = time.perf_counter() - began
            duplicates = segment.received()["duplicates"]
        finally:
            for proc in procs:
                stop(proc)
            segment.stop()
        print(f"{replicas} replica(s): {seconds:.1f} s, {count / seconds:,.0f} msg/s, {duplicates} duplicates")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--drain", type=int, default=20_000)
    args = parser.parse_args()
    cluster = Cluster()
    try:
        ingest(cluster, args.count)
        drain(cluster, args.drain)
    finally:
        cluster.destroy()


if __name__ == "__main__":
    main()
