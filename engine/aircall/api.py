"""Aircall's public REST API (v1): HTTP Basic with the API ID and token, its rate limit honoured and shared.

Aircall allows a company 60 requests a minute, shared by every integration that uses the company's API keys
(the CRM's, the helpdesk's, this one), and says where a caller stands in every answer
(`X-AircallApi-Limit`, `X-AircallApi-Remaining`, `X-AircallApi-Reset`, the last in unix seconds). The client:
- keeps to its share, `rate` requests over any 60 seconds, so that the other integrations keep the rest;
- waits for the reset when Aircall says nothing remains, instead of spending a request on a 429;
- after a 429 all the same (another integration spent what remained) waits for the reset and asks again;
- retries 5xx answers and network errors with backoff.

Time comes from a `Clock`, so that tests and benchmarks can pretend to wait.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from engine import LIBRARY_NAME, __version__
from engine.digits import ascii_digits
from engine.retry import backoff, retry_after

MINUTE = 60.0
RESET_MARGIN = 1.0  # seconds past Aircall's reset before asking again: its clock and ours differ a little
PACE_MARGIN = 0.5  # seconds past a minute since the request `rate` requests ago: requests take a while to arrive
# The longest wait an answer can ask for. Aircall's window is a minute; a Retry-After or a reset an hour or a
# century away (99999999999) is a mistake of someone's, waited as this and said, never slept as asked.
MAX_WAIT = 300.0


class AircallError(Exception):
    """The API could not be used: bad credentials, a refusal, or failures past the retries. `status` is the HTTP
    status of a refusal (400, 404, ...), None for the rest."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class AircallAuthError(AircallError):
    pass


class Clock:
    """Wall-clock time and sleeping, in one place so that tests can substitute a clock that only pretends."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass
class RateLimitLog:
    requests: int = 0
    waits: int = 0  # times the client held a request back a second or more: for its share, or for Aircall's reset
    seconds: float = 0.0  # how long it held requests back, in all
    throttled: int = 0  # 429s received all the same


class Pacer:
    """At most `per_minute` requests in any 60 seconds: the share of Aircall's quota that this client takes.

    A sliding window rather than even spacing: a small backfill goes at once, a large one settles at the rate.
    The minute is counted from when a request leaves, and Aircall counts from when it arrives: half a second
    more keeps a request that travelled faster than the one a minute before it out of that one's minute.
    """

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self.sent: deque[float] = deque(maxlen=per_minute)

    def delay(self, now: float) -> float:
        if len(self.sent) < self.per_minute:
            return 0.0
        return max(0.0, self.sent[0] + MINUTE + PACE_MARGIN - now)

    def record(self, now: float) -> None:
        self.sent.append(now)

    def seconds_for(self, requests: int, now: float, per_minute: int | None = None) -> float:
        """How long `requests` more requests take from now at this pace (or a lower one, Aircall's own)."""
        n = min(self.per_minute, per_minute or self.per_minute)
        times: deque[float] = deque((t for t in self.sent if t > now - MINUTE - PACE_MARGIN), maxlen=n)
        moment = now
        for _ in range(requests):
            if len(times) == n:
                moment = max(moment, times[0] + MINUTE + PACE_MARGIN)
            times.append(moment)
        return moment - now


@dataclass
class AircallClient:
    api_url: str
    api_id: str
    api_token: str = field(repr=False)
    rate: int | None = None  # requests a minute this client allows itself; None: as many as Aircall allows
    timeout: float = 15.0
    max_retries: int = 6  # 5xx answers and network errors in a row
    max_throttled: int = 30  # 429s in a row, each followed by a wait for the reset
    clock: Clock = field(default_factory=Clock)
    log: RateLimitLog = field(default_factory=RateLimitLog)
    max_answer_bytes: int | None = None  # a larger answer is refused (status 413), read no further
    on_wait: Callable[[float], None] | None = None  # told before each wait, with its length in seconds

    def __post_init__(self) -> None:
        self.session = requests.Session()
        self.session.auth = (self.api_id, self.api_token)
        self.session.headers["User-Agent"] = f"{LIBRARY_NAME}/{__version__}"
        self.pacer = Pacer(self.rate) if self.rate else None
        self.limit: int | None = None  # Aircall's, from X-AircallApi-Limit
        self._remaining: int | None = None
        self._reset_at: float = 0.0

    # -- requests ------------------------------------------------------------------------------------------

    def request(self, method: str, path_or_url: str, **kwargs: Any) -> Any:
        """The JSON answer (an object, for every endpoint the engine reads, but not checked here)."""
        url = path_or_url if path_or_url.startswith("http") else f"{self.api_url.rstrip('/')}/{path_or_url.lstrip('/')}"
        failures = throttled = 0
        while True:
            self._wait_turn()
            if self.pacer is not None:
                self.pacer.record(self.clock.now())
            try:
                response = self.session.request(
                    method, url, timeout=self.timeout, stream=self.max_answer_bytes is not None, **kwargs
                )
            except requests.RequestException as exc:
                failures += 1
                if failures > self.max_retries:
                    raise AircallError(f"Aircall API unreachable at {self.api_url}: {type(exc).__name__}") from None
                self._backoff(failures)
                continue
            self.log.requests += 1
            self._read_quota(response)
            if response.status_code in (401, 403):
                raise AircallAuthError(
                    f"Aircall refused the API credentials ({response.status_code}): "
                    "check AIRCALL_API_ID and AIRCALL_API_TOKEN"
                )
            if response.status_code == 429:
                self.log.throttled += 1
                throttled += 1
                if throttled > self.max_throttled:
                    raise AircallError(
                        f"Aircall answered 429 {throttled} times in a row: the account's other integrations use "
                        "the whole quota; try again later or with a lower --rate"
                    )
                self._remaining = 0
                self._reset_at = max(self._reset_at, self._retry_at(response))
                continue
            if response.status_code >= 500:
                failures += 1
                if failures > self.max_retries:
                    raise AircallError(f"Aircall API answered {response.status_code} {failures} times")
                self._backoff(failures)
                continue
            if response.status_code >= 400:
                raise AircallError(
                    f"Aircall API answered {response.status_code}: {response.text[:300]}", response.status_code
                )
            try:
                content = self._content(response)
            except requests.RequestException as exc:  # the body broke off, or took too long to come
                raise AircallError(f"Aircall API's answer to {method} broke off: {type(exc).__name__}") from None
            if not content:
                return {}
            try:
                return json.loads(content)
            except ValueError:  # a proxy's error page, a body cut off: not an answer of Aircall's API
                raise AircallError(
                    f"Aircall API's answer to {method} {url.split('?')[0]} is not JSON (status {response.status_code})"
                ) from None

    def _content(self, response: requests.Response) -> bytes:
        """The body, read no further than max_answer_bytes and for no longer than twice the timeout."""
        if self.max_answer_bytes is None:
            return response.content
        chunks, size, deadline = [], 0, time.monotonic() + 2 * self.timeout
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > self.max_answer_bytes or time.monotonic() > deadline:
                response.close()
                what = f"over {self.max_answer_bytes:,} bytes" if size > self.max_answer_bytes else "too slow to come"
                raise AircallError(f"Aircall API's answer is {what}", 413)
            chunks.append(chunk)
        return b"".join(chunks)

    def list_page(self, path: str, key: str, params: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One page of a list endpoint: its objects and its `meta` (count, total, next_page_link, ...)."""
        document = self.request("GET", path, params=params)
        return _objects(document, key, path), _meta(document)

    def pages(self, path: str, key: str, params: dict[str, Any]) -> Iterator[tuple[list[dict[str, Any]], dict]]:
        """Each page of a list endpoint, following `meta.next_page_link`."""
        document = self.request("GET", path, params=params)
        while True:
            meta = _meta(document)
            yield _objects(document, key, path), meta
            link = meta.get("next_page_link")
            if not link:
                return
            if not isinstance(link, str):
                raise AircallError(f"Aircall API's {path} listing gave a next page that is no link")
            document = self.request("GET", link)

    def seconds_for(self, requests_: int) -> float:
        """How long that many more requests take at this client's share and Aircall's limit (waits only)."""
        limit = self.limit or 60
        per_minute = min(self.rate, limit) if self.rate else limit
        pacer = self.pacer or Pacer(per_minute)
        return pacer.seconds_for(requests_, self.clock.now(), per_minute)

    # -- rate limit ----------------------------------------------------------------------------------------

    def _read_quota(self, response: requests.Response) -> None:
        limit = response.headers.get("X-AircallApi-Limit", "").strip()
        remaining = response.headers.get("X-AircallApi-Remaining", "").strip()
        reset = response.headers.get("X-AircallApi-Reset")
        if ascii_digits(limit) and int(limit) > 0:
            self.limit = int(limit)
        if ascii_digits(remaining):
            self._remaining = int(remaining)
        if reset is not None:
            with contextlib.suppress(ValueError):
                self._reset_at = self._capped(self._moment(float(reset)))

    def _moment(self, reset: float) -> float:
        """X-AircallApi-Reset is a unix time; a small number would be seconds from now, and is read so."""
        return reset if reset > 1_000_000_000 else self.clock.now() + reset

    def _capped(self, moment: float) -> float:
        """`moment`, or MAX_WAIT from now when it is later (or no number at all)."""
        latest = self.clock.now() + MAX_WAIT
        return moment if moment <= latest else latest  # NaN and infinity compare false: the latest

    def _retry_at(self, response: requests.Response) -> float:
        wait = retry_after(response.headers.get("Retry-After"), now=self.clock.now())
        if wait is not None:
            return self._capped(self.clock.now() + wait)
        if response.headers.get("X-AircallApi-Reset") is not None and self._reset_at > self.clock.now():
            return self._reset_at
        return self.clock.now() + MINUTE  # no word on when: Aircall's window is a minute

    def turn_delay(self) -> float:
        """Seconds before the next request may leave: this client's share, or Aircall's reset (0: now)."""
        now = self.clock.now()
        delay = self.pacer.delay(now) if self.pacer is not None else 0.0
        if self._remaining is not None and self._remaining <= 0:
            delay = max(delay, self._reset_at + RESET_MARGIN - now)
        return delay

    def _wait_turn(self) -> None:
        delay = self.turn_delay()
        if self._remaining is not None and self._remaining <= 0:
            self._remaining = None  # after the reset: known again from the next answer
        if delay > 0:
            self.log.seconds += delay
            if delay >= 1.0:  # the waits a person would notice; the pacer's milliseconds between requests are not
                self.log.waits += 1
                if self.on_wait is not None:
                    self.on_wait(delay)
            self.clock.sleep(delay)

    def _backoff(self, failures: int) -> None:
        self.clock.sleep(backoff(failures - 1, 0.5, 30.0))

    # -- resources -----------------------------------------------------------------------------------------

    def webhooks(self) -> list[dict[str, Any]]:
        return [w for page, _ in self.pages("webhooks", "webhooks", {"per_page": 50}) for w in page]

    def create_webhook(self, url: str, events: list[str], name: str) -> dict[str, Any]:
        body = {"custom_name": name, "url": url, "events": events}
        answer = self.request("POST", "webhooks", json=body)
        webhook = answer.get("webhook") if isinstance(answer, dict) else None
        return webhook if isinstance(webhook, dict) else {}

    def enable_webhook(self, webhook_id: str) -> dict[str, Any]:
        """Turn a webhook Aircall disabled (after failed deliveries) back on; its events and token stay."""
        answer = self.request("PUT", f"webhooks/{webhook_id}", json={"active": True})
        webhook = answer.get("webhook") if isinstance(answer, dict) else None
        return webhook if isinstance(webhook, dict) else {}

    def numbers(self) -> list[dict[str, Any]]:
        return [n for page, _ in self.pages("numbers", "numbers", {"per_page": 50}) for n in page]


def _meta(document: Any) -> dict[str, Any]:
    meta = document.get("meta") if isinstance(document, dict) else None
    return meta if isinstance(meta, dict) else {}


def _objects(document: Any, key: str, path: str) -> list[dict[str, Any]]:
    """The objects of a listing's page; AircallError when the answer is not one (a list, strings, nulls)."""
    if not isinstance(document, dict):
        raise AircallError(f"Aircall API's {path} listing answered a {type(document).__name__}, not an object")
    objects = document.get(key)
    if objects is None:
        return []
    if not isinstance(objects, list) or not all(isinstance(obj, dict) for obj in objects):
        raise AircallError(f"Aircall API's {path} listing holds something other than {key} objects in '{key}'")
    return objects
