"""Segment's HTTP Tracking API, batch endpoint: one Destination (engine.segment.destination). One request, one
answer, classified for delivery.

The stored messages are already compact JSON; a batch request is built by joining their bytes, never by
decoding and encoding them again.
"""

from __future__ import annotations

import email.utils
import time

import requests

from engine import LIBRARY_NAME, __version__
from engine.segment.destination import Answer, Outcome
from engine.values import iso8601

MAX_BATCH_BYTES = 500 * 1000  # Segment refuses a batch request over 500 KB


def batch_body(messages: list[bytes], sent_at: float) -> bytes:
    stamp = iso8601(sent_at) or ""
    return b'{"batch":[' + b",".join(messages) + b'],"sentAt":"' + stamp.encode() + b'"}'


class SegmentClient:
    """Sends batch requests with HTTP Basic auth (the write key as user name), keeping connections open."""

    name = "Segment"
    max_batch_bytes = MAX_BATCH_BYTES

    def __init__(self, api_url: str, write_key: str, timeout: float = 10.0) -> None:
        self.url = api_url.rstrip("/") + "/v1/batch"
        self.timeout = timeout
        self.session = requests.Session()
        self.session.auth = (write_key, "")
        self.session.headers.update({"Content-Type": "application/json", "User-Agent": f"{LIBRARY_NAME}/{__version__}"})

    def send(self, messages: list[bytes]) -> Answer:
        """Blocking: run it in a thread."""
        started = time.perf_counter()
        try:
            response = self.session.post(self.url, data=batch_body(messages, time.time()), timeout=self.timeout)
        except requests.Timeout:
            return Answer(Outcome.RETRY, None, f"no answer within {self.timeout:g}s", None, _since(started))
        except requests.RequestException as exc:
            return Answer(Outcome.RETRY, None, f"connection failed: {type(exc).__name__}", None, _since(started))
        seconds = _since(started)
        status = response.status_code
        text = " ".join(response.text[:300].split())
        if 200 <= status < 300:
            return Answer(Outcome.DELIVERED, status, "ok", None, seconds)
        if status in (400, 413):
            return Answer(Outcome.REJECTED, status, f"Segment answered {status}: {text}", None, seconds)
        detail = f"Segment answered {status}: {text}"
        if status in (401, 403):
            detail = f"Segment refused the write key ({status}); check SEGMENT_WRITE_KEY"
        return Answer(Outcome.RETRY, status, detail, retry_after(response.headers.get("Retry-After")), seconds)

    def close(self) -> None:
        self.session.close()


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """Retry-After in seconds, from delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(moment.timestamp() - (time.time() if now is None else now), 0.0)


def _since(started: float) -> float:
    return time.perf_counter() - started
