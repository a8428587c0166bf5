"""The smallest durable webhook app, a baseline for the ingest benchmark.

Starlette under uvicorn that parses the JSON body, hands the raw bytes to a thread that group-commits them to
SQLite (WAL, synchronous=FULL, a rowid table with a unique key), and answers 200 once they are on disk: what
any server that acknowledges only stored webhooks has to pay, with nothing else. DURABLE_DB names the file.
"""

import asyncio
import hashlib
import os
import queue
import sqlite3
import threading

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

_jobs: queue.SimpleQueue = queue.SimpleQueue()


def _committer(path: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS webhooks (id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, body BLOB)")
    while True:
        group = [_jobs.get()]
        while len(group) < 512:
            try:
                group.append(_jobs.get_nowait())
            except queue.Empty:
                break
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO webhooks (key, body) VALUES (?, ?) ON CONFLICT (key) DO NOTHING",
            [(hashlib.sha256(body).hexdigest()[:32], body) for body, _, _ in group],
        )
        conn.execute("COMMIT")
        for _, loop, future in group:
            loop.call_soon_threadsafe(future.set_result, None)


threading.Thread(target=_committer, args=(os.environ.get("DURABLE_DB", "durable.sqlite3"),), daemon=True).start()


async def receive(request: Request) -> JSONResponse:
    body = await request.body()
    await request.json()
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    _jobs.put((body, loop, future))
    await future
    return JSONResponse({"status": "accepted"})


app = Starlette(routes=[Route("/webhooks/aircall", receive, methods=["POST"])])
