"""An outbox with a history: webhooks, their messages, deliveries and dead letters spread over a past span, written
straight into a SQLite outbox file. For the console's browser tests (a status chart with an hour in it) and for
bench/bench_console.py (a million messages).

Bodies are the sample webhooks (token blanked) and the messages the shipped mappings make of them, each mapped
once and reused: the console reads rows, it does not check that a body's ids match its row's.
"""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

from engine.aircall.envelope import webhook_from_json
from engine.mapping.load import load_mappings
from engine.outbox import SqliteOutbox, stored_webhook
from tests.conftest import FIXTURES, MAPPINGS


def _samples() -> list[tuple[str, bytes, list[bytes]]]:
    mappings = load_mappings(MAPPINGS)
    samples = []
    for path in sorted(FIXTURES.glob("*.json")):
        webhook = webhook_from_json(json.loads(path.read_bytes()))
        stored = stored_webhook(webhook)
        bodies = [body for _, body in mappings.get(webhook.event).render_json(webhook)]
        samples.append((webhook.event, stored.body, bodies))
    return samples


def seed(
    path: Path,
    webhooks: int,
    span_seconds: float,
    now: float,
    pending: int = 0,
    dead: int = 0,
    batch: int = 20_000,
) -> int:
    """Write `webhooks` webhooks received over the `span_seconds` before `now` (busier mid-span, as a working day
    is), each mapped a moment later into its sample's messages, delivered a moment after that, except the newest
    `pending` messages; then `dead` dead letters. Returns the number of messages written."""
    SqliteOutbox(path).close()  # the schema, as the server makes it
    samples = _samples()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    start_id = (conn.execute("SELECT MAX(id) FROM webhooks").fetchone()[0] or 0) + 1
    rows_w, rows_m = [], []
    written = 0
    times = _arrivals(webhooks, span_seconds, now)
    for n, received in enumerate(times):
        event, body, messages = samples[n % len(samples)]
        key = f"seed{start_id + n:028x}"
        processed = received + 0.05
        rows_w.append((start_id + n, key, event, received, body, processed))
        for index, message in enumerate(messages):
            rows_m.append((f"seed-{start_id + n}-{index}", key, event, message, len(message), processed, processed))
        if len(rows_m) >= batch or n == webhooks - 1:
            written += len(rows_m)
            _insert(conn, rows_w, rows_m)
            rows_w, rows_m = [], []
    conn.execute("BEGIN")
    conn.execute(
        "UPDATE messages SET delivered_at = created_at + 0.3, attempts = 1 WHERE id <= "
        "(SELECT MAX(id) FROM messages) - ?",
        (pending,),
    )
    reasons = ["Segment answered 400: message too large", "call.ended.yaml: TypeError: unsupported operand"]
    conn.executemany(
        "INSERT INTO dead_letters (message_id, event, body, webhook, reason, attempts, created_at) "
        "VALUES (?, ?, NULL, ?, ?, 1, ?)",
        [(None, samples[i % len(samples)][0], samples[i % len(samples)][1], reasons[i % 2], now - 600 + i)
         for i in range(dead)],
    )  # fmt: skip
    conn.execute("COMMIT")
    conn.close()
    return written


def _arrivals(count: int, span: float, now: float) -> list[float]:
    """`count` moments in [now - span, now): minute by minute, busier in swells of an hour, with some noise, as a
    working day is (a chart worth reading); spread evenly within each minute."""
    minutes = max(int(span // 60), 1)
    weights = [
        (1.0 + 0.6 * math.sin(2 * math.pi * m / 60)) * (0.75 + 0.5 * ((m * 7919) % 101) / 101) for m in range(minutes)
    ]
    total = sum(weights)
    counts = [int(count * w / total) for w in weights]
    for m in range(count - sum(counts)):  # what rounding left over
        counts[m % minutes] += 1
    times = []
    for m, n in enumerate(counts):
        start = now - span + 60 * m
        times += [start + 60 * (i + 0.5) / n for i in range(n)]
    return times


def _insert(conn: sqlite3.Connection, webhooks: list[tuple], messages: list[tuple]) -> None:
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO webhooks (id, key, event, received_at, body, processed_at) VALUES (?, ?, ?, ?, ?, ?)", webhooks
    )
    conn.executemany(
        "INSERT INTO messages (message_id, webhook_key, event, body, size, created_at, due_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        messages,
    )
    conn.execute("COMMIT")
