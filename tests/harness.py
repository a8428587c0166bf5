"""Real processes for the integration tests: `engine serve` and the fake Segment, on free loopback ports."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

from engine.aircall.envelope import webhook_from_json
from engine.mapping.load import load_mappings
from tests.conftest import ENGINE, FIXTURES, ROOT

TOKEN = "45b1b6f1a2c3d4e5f60718293a4b5c6d"  # the token in every sample webhook
WRITE_KEY = "test-write-key"


# Figures the reliability suite reports at the end of the run (see pytest_terminal_summary in conftest.py).
FIGURES: dict[str, float] = {}


def count(name: str, amount: float = 1) -> None:
    FIGURES[name] = FIGURES.get(name, 0) + amount


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float = 20.0, interval: float = 0.05, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = condition()
        except (requests.ConnectionError, requests.Timeout):
            result = None
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


class Process:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args, self.env, self.log_path = args, env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Process:
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def children_of(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
    return children


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRCALL_", "SEGMENT_", "ENGINE_"))}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class FakeSegment:
    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = base_env() | {"FAKE_SEGMENT_WRITE_KEY": WRITE_KEY}
        args = [sys.executable, "-m", "uvicorn", "tests.fake_segment:app", "--port", str(self.port),
                "--log-level", "warning"]  # fmt: skip
        self.process = Process(args, env, tmp / "fake-segment.log").start()
        wait_for(lambda: requests.get(f"{self.url}/_received", timeout=1).ok, what="fake Segment")

    def control(self, **order: object) -> None:
        requests.post(f"{self.url}/_control", json=order, timeout=5).raise_for_status()

    def received(self) -> dict:
        return requests.get(f"{self.url}/_received", timeout=10).json()

    def message_ids(self) -> list[str]:
        return [m["messageId"] for m in self.received()["messages"]]

    def wait_for_ids(self, expected: set[str], timeout: float = 30.0) -> dict:
        wait_for(lambda: expected <= set(self.message_ids()), timeout, what=f"{len(expected)} messages at Segment")
        return self.received()

    def stop(self) -> None:
        self.process.stop()


class FakeAircall:
    API_ID, API_TOKEN = "api-id", "api-token"

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = base_env() | {"FAKE_AIRCALL_ID": self.API_ID, "FAKE_AIRCALL_TOKEN": self.API_TOKEN}
        args = [sys.executable, "-m", "uvicorn", "tests.fake_aircall:app", "--port", str(self.port),
                "--log-level", "warning"]  # fmt: skip
        self.process = Process(args, env, tmp / "fake-aircall.log").start()
        wait_for(lambda: requests.get(f"{self.url}/_stats", timeout=1).ok, what="fake Aircall")

    def control(self, **order: object) -> None:
        requests.post(f"{self.url}/_control", json=order, timeout=5).raise_for_status()

    def stats(self) -> dict:
        return requests.get(f"{self.url}/_stats", timeout=5).json()

    def settings(self) -> dict[str, str]:
        return {"AIRCALL_API_URL": f"{self.url}/v1", "AIRCALL_API_ID": self.API_ID,
                "AIRCALL_API_TOKEN": self.API_TOKEN}  # fmt: skip

    def stop(self) -> None:
        self.process.stop()


class Engine:
    """`engine serve` on a free port, with the settings a test gives."""

    def __init__(self, tmp: Path, segment: FakeSegment | None, **settings: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = tmp / "outbox.sqlite3"
        self.env = base_env() | {
            "AIRCALL_WEBHOOK_TOKEN": TOKEN,
            "ENGINE_DB": str(self.db),
            "ENGINE_BACKOFF_BASE_SECONDS": "0.1",
            "ENGINE_BACKOFF_CAP_SECONDS": "1",
            "ENGINE_LEASE_SECONDS": "5",
            # No look at the account's webhooks unless a test asks (test_aircall_watch): tests count API requests.
            "AIRCALL_WATCH_SECONDS": "0",
        }
        if segment is not None:
            self.env |= {"SEGMENT_API_URL": segment.url, "SEGMENT_WRITE_KEY": WRITE_KEY}
        self.env |= settings
        self.env = {k: v for k, v in self.env.items() if v is not None}
        self.process: Process | None = None
        self.workers = 1

    def start(self, workers: int = 1, wait: bool = True) -> Engine:
        self.workers = workers
        settings_file = self.tmp / "empty.env"  # not the .env of the working directory: only self.env counts
        settings_file.touch()
        args = [str(ENGINE), "--env-file", str(settings_file), "serve", "--port", str(self.port),
                "--workers", str(workers)]  # fmt: skip
        self.process = Process(args, self.env, self.tmp / "engine.log").start()
        if wait:
            wait_for(lambda: requests.get(f"{self.url}/healthz", timeout=1).ok, what="engine serve")
        return self

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        return self.process.stop(sig) if self.process else None

    def kill(self) -> None:
        """SIGKILL to the server and, with --workers N, every worker at once, as in a machine crash."""
        proc = self.process.proc
        for pid in [proc.pid, *children_of(proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait()

    def post(self, body: bytes | dict, headers: dict[str, str] | None = None, timeout: float = 10.0):
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        return requests.post(
            f"{self.url}/webhooks/aircall",
            data=data,
            headers={"Content-Type": "application/json", **(headers or {})},
            timeout=timeout,
        )

    def health(self) -> dict:
        return requests.get(f"{self.url}/healthz", timeout=5).json()

    def metrics(self) -> str:
        return requests.get(f"{self.url}/metrics", timeout=5).text


def sample(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def sample_names() -> list[str]:
    return sorted(p.stem for p in FIXTURES.glob("*.json"))


@functools.cache
def _mappings():
    return load_mappings(ROOT / "mappings")


def expected_ids(envelope: dict) -> list[str]:
    """The messageIds the shipped mappings give for a webhook: what must reach Segment."""
    webhook = webhook_from_json(envelope)
    return [message_id for message_id, _ in _mappings().get(webhook.event).render_json(webhook)]


def readme_events() -> dict[str, list[tuple[str, str | None]]]:
    """README's table of events: for each Aircall event, the (type, Segment event) of each message it promises."""
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("<!-- engine events: begin") : readme.index("<!-- engine events: end")]
    events: dict[str, list[tuple[str, str | None]]] = {}
    for event, sent in re.findall(r"^\| `([^`]+)` \| ([^|]+) \|", table, re.M):
        promised = []
        for message in sent.split("; "):
            named = re.match(r"(track|identify|group)(?: `([^`]+)`)?", message)
            if named:
                promised.append((named.group(1), named.group(2)))
        events[event] = promised
    return events


def call_webhook(n: int) -> dict:
    """The call.ended sample as a different call: a distinct webhook with distinct messageIds."""
    envelope = sample("call.ended")
    envelope["data"]["id"] = 900_000_000 + n
    return envelope


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text, or 0 when the series is absent."""
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels == labels
    ]
    assert len(values) <= 1, f"{name}{labels} appears {len(values)} times"
    return values[0] if values else 0.0
