"""Several replicas on PostgreSQL: two `engine serve` behind a real nginx upstream sharing one outbox, one of
them killed mid-burst; and PostgreSQL itself restarted during a burst."""

from __future__ import annotations

import collections
import concurrent.futures
import os
import shutil
import threading
import time

import pytest
import requests

from tests.conftest import run_engine
from tests.harness import Engine, Process, call_webhook, count, expected_ids, free_port, wait_for

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)


def aircall_burst(post, numbers: range, clients: int = 8) -> tuple[list[int], collections.Counter]:
    """Clients that behave like Aircall: a webhook without a 2xx is sent again."""
    acknowledged: list[int] = []
    statuses: collections.Counter = collections.Counter()
    lock = threading.Lock()
    queue = collections.deque(numbers)

    def client() -> None:
        while True:
            with lock:
                if not queue:
                    return
                n = queue.popleft()
            for _ in range(400):
                try:
                    status = post(call_webhook(n)).status_code
                except requests.RequestException:
                    status = "no answer"
                with lock:
                    statuses[status] += 1
                if status == 200:
                    with lock:
                        acknowledged.append(n)
                    break
                time.sleep(0.05)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(client) for _ in range(clients)]:
            future.result()
    return acknowledged, statuses


def replica(tmp_path, segment, name: str, url: str) -> Engine:
    folder = tmp_path / name
    folder.mkdir()
    return Engine(folder, segment, ENGINE_DB=url, ENGINE_LEASE_SECONDS="3").start()


def test_two_replicas_behind_nginx_one_killed_mid_burst(tmp_path, segment, postgres_url, stop_afterwards):
    if NGINX is None:
        pytest.skip("nginx is not installed (apt-get install nginx): the replicas test needs it")
    started = time.monotonic()
    first, second = replica(tmp_path, segment, "a", postgres_url), replica(tmp_path, segment, "b", postgres_url)
    stop_afterwards(first)
    stop_afterwards(second)
    port = free_port()
    user = "user root;" if os.geteuid() == 0 else ""
    (tmp_path / "nginx.conf").write_text(f"""
        {user}
        daemon off; worker_processes 1; pid {tmp_path}/nginx.pid; error_log {tmp_path}/nginx-error.log warn;
        events {{ worker_connections 256; }}
        http {{
            access_log off;
            client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy;
            fastcgi_temp_path {tmp_path}/fcgi; uwsgi_temp_path {tmp_path}/uwsgi; scgi_temp_path {tmp_path}/scgi;
            upstream replicas {{ server 127.0.0.1:{first.port} max_fails=1 fail_timeout=30s;
                                 server 127.0.0.1:{second.port} max_fails=1 fail_timeout=30s; }}
            server {{
                listen 127.0.0.1:{port};
                location / {{
                    proxy_pass http://replicas;
                    # A replica that died: try the other. A webhook it may have stored already is stored
                    # again under the same messageIds, which the outbox drops.
                    proxy_next_upstream error timeout non_idempotent;
                }}
            }}
        }}
    """)  # fmt: skip
    proxy = Process([NGINX, "-c", str(tmp_path / "nginx.conf"), "-p", str(tmp_path)], os.environ.copy(),
                    tmp_path / "nginx.log").start()  # fmt: skip
    base = f"http://127.0.0.1:{port}/webhooks/aircall"
    wait_for(lambda: requests.post(base, data=b"x", timeout=1).status_code == 415, what="nginx")
    try:

        def post(envelope):
            return requests.post(base, json=envelope, timeout=10)

        killer = threading.Timer(2.0, first.kill)  # halfway through the burst
        killer.start()
        acknowledged, statuses = aircall_burst(post, range(1500))
        killer.join()
        assert first.process.proc.poll() is not None  # it really died
        expected = {i for n in acknowledged for i in expected_ids(call_webhook(n))}
        received = segment.wait_for_ids(expected, timeout=90)
        delivered = collections.Counter(m["messageId"] for m in received["messages"])
        duplicates = sum(c - 1 for c in delivered.values() if c > 1)
    finally:
        proxy.stop()
        second.stop()
    assert len(set(acknowledged)) == 1500
    assert expected <= delivered.keys()
    assert "engine.server stopped" not in first.process.log  # SIGKILL: no clean stop, the lease did the work
    count("postgres replicas: webhooks acknowledged", len(set(acknowledged)))
    count("postgres replicas: messages delivered", len(expected))
    count("postgres replicas: duplicate deliveries (Segment dedupes by messageId)", duplicates)
    count("postgres replicas: answers other than 200 during the kill", sum(v for k, v in statuses.items() if k != 200))
    count("postgres replicas: seconds", round(time.monotonic() - started, 1))


@pytest.fixture
def stop_afterwards():
    servers: list[Engine] = []
    yield servers.append
    for server in servers:
        server.kill()


def test_postgres_restarted_during_a_burst_503s_then_nothing_lost(tmp_path, segment, postgres_cluster, stop_afterwards):
    # A password in the URL (the test cluster trusts any): it must never show in logs or answers.
    url = postgres_cluster.new_database().replace("postgres@", "postgres:s3cret-pw@")
    server = replica(tmp_path, segment, "a", url)
    stop_afterwards(server)
    health_during_outage: list[dict] = []

    def outage() -> None:
        postgres_cluster.stop()
        try:
            time.sleep(0.5)
            health_during_outage.append(requests.get(f"{server.url}/healthz", timeout=10).json())
            time.sleep(1.5)
        finally:
            postgres_cluster.start()

    trigger = threading.Timer(0.5, outage)
    trigger.start()
    try:
        acknowledged, statuses = aircall_burst(lambda e: server.post(e, timeout=15), range(2000))
    finally:
        trigger.join()
    assert statuses[503] > 0  # Aircall was told to retry while the database was away
    assert set(statuses) <= {200, 503}
    assert health_during_outage and health_during_outage[0]["status"] == "error"
    assert "outbox unreadable" in health_during_outage[0]["reason"]
    expected = {i for n in acknowledged for i in expected_ids(call_webhook(n))}
    received = segment.wait_for_ids(expected, timeout=60)
    assert len(set(acknowledged)) == 2000
    wait_for(lambda: server.health().get("outbox", {}).get("pending") == 0, 30, what=f"drained: {server.health()}")
    status = run_engine("outbox", "status", "--json", env={"ENGINE_DB": url})
    assert status.code == 0 and status.json()["pending"] == 0
    server.stop()
    assert "s3cret-pw" not in server.process.log + status.out + str(health_during_outage)
    assert "postgres:***@" in server.process.log
    count("postgres restart: webhooks answered 503 then retried", statuses[503])
    count("postgres restart: duplicate deliveries (Segment dedupes by messageId)", received["duplicates"])
