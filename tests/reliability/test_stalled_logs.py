"""A log reader that stops reading (journald under load, a stuck pipe) must not stop the webhooks: the event loop
only queues log lines, a thread writes them, and past a bound the lines are dropped and counted."""

from __future__ import annotations

import concurrent.futures
import re
import signal
import subprocess
import threading

import requests

from engine.logs import QUEUED_LINES
from tests.conftest import ENGINE, ROOT
from tests.harness import TOKEN, base_env, call_webhook, count, free_port, wait_for


def test_webhooks_are_answered_while_nobody_reads_the_servers_stderr(tmp_path):
    port = free_port()
    env = base_env() | {"AIRCALL_WEBHOOK_TOKEN": TOKEN, "ENGINE_DB": str(tmp_path / "outbox.sqlite3")}
    (tmp_path / "empty.env").touch()
    args = [str(ENGINE), "--env-file", str(tmp_path / "empty.env"), "serve", "--port", str(port)]
    # stderr is a pipe that nobody reads: it fills after 64 KB, about 600 log lines.
    server = subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/webhooks/aircall"
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok, what="engine serve")
        total = QUEUED_LINES + 1500  # past the pipe and past the queue: some lines must be dropped

        def send(n: int) -> int:
            return requests.post(url, json=call_webhook(n), timeout=10).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(send, range(total)))
        assert answers == [200] * total
        count("stalled logs: webhooks answered while stderr was not read", total)
        # Someone reads again: the queued lines come out, then the count of those that were dropped.
        lines: list[bytes] = []
        reader = threading.Thread(target=lambda: lines.extend(server.stderr), daemon=True)
        reader.start()
        wait_for(lambda: send(total) == 200 and any(b"log lines dropped" in line for line in lines),
                 what="the dropped-lines warning")  # fmt: skip
        dropped = next(line for line in lines if b"log lines dropped" in line)
        written = sum(b"webhook event=call.ended" in line for line in lines)
        assert int(re.search(rb" dropped=(\d+)$", dropped.rstrip()).group(1)) + written >= total
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:  # stuck writing to the pipe: what this test exists to catch
            server.kill()
            server.wait()
