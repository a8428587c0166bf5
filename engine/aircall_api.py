"""Aircall's public REST API (v1): HTTP Basic with the API ID and token, its rate limit honoured.

Aircall allows 60 requests a minute per company and says where a caller stands in every answer
(`X-AircallApi-Limit`, `X-AircallApi-Remaining`, `X-AircallApi-Reset`, the last in unix seconds). The client
waits for the reset when nothing remains, instead of spending a request on a 429; a 429 or a 5xx anyway is
retried after the reset or with backoff.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from engine import LIBRARY_NAME, __version__


class AircallError(Exception):
    """The API could not be used: bad credentials, a refusal, or failures past the retries."""


class AircallAuthError(AircallError):
    pass


@dataclass
class RateLimitLog:
    waits: int = 0
    seconds: float = 0.0
    requests: int = 0


@dataclass
class AircallClient:
    api_url: str
    api_id: str
    api_token: str = field(repr=False)
    timeout: float = 15.0
    max_retries: int = 6
    sleep: Callable[[float], None] = time.sleep
    log: RateLimitLog = field(default_factory=RateLimitLog)

    def __post_init__(self) -> None:
        self.session = requests.Session()
        self.session.auth = (self.api_id, self.api_token)
        self.session.headers["User-Agent"] = f"{LIBRARY_NAME}/{__version__}"
        self._remaining: int | None = None
        self._reset_at: float = 0.0

    # -- requests ------------------------------------------------------------------------------------------

    def request(self, method: str, path_or_url: str, **kwargs: Any) -> dict[str, Any]:
        url = path_or_url if path_or_url.startswith("http") else f"{self.api_url.rstrip('/')}/{path_or_url.lstrip('/')}"
        for attempt in range(self.max_retries + 1):
            self._wait_for_quota()
            try:
                response = self.session.request(method, url, timeout=self.timeout, **kwargs)
            except requests.RequestException as exc:
                if attempt == self.max_retries:
                    raise AircallError(f"Aircall API unreachable at {self.api_url}: {type(exc).__name__}") from None
                self._backoff(attempt)
                continue
            self.log.requests += 1
            self._read_quota(response)
            if response.status_code in (401, 403):
                raise AircallAuthError(
                    f"Aircall refused the API credentials ({response.status_code}): "
                    "check AIRCALL_API_ID and AIRCALL_API_TOKEN"
                )
            if response.status_code == 429 or response.status_code >= 500:
                if attempt == self.max_retries:
                    raise AircallError(f"Aircall API answered {response.status_code} {self.max_retries + 1} times")
                if response.status_code == 429:
                    self._remaining = 0
                    self._reset_at = max(self._reset_at, time.time() + _retry_after(response))
                else:
                    self._backoff(attempt)
                continue
            if response.status_code >= 400:
                raise AircallError(f"Aircall API answered {response.status_code}: {response.text[:300]}")
            return response.json() if response.content else {}
        raise AircallError("unreachable")  # pragma: no cover

    def pages(self, path: str, key: str, params: dict[str, Any]) -> Iterator[tuple[list[dict[str, Any]], dict]]:
        """Each page of a list endpoint, following `meta.next_page_link`."""
        document = self.request("GET", path, params=params)
        while True:
            meta = document.get("meta") or {}
            yield document.get(key) or [], meta
            link = meta.get("next_page_link")
            if not link:
                return
            document = self.request("GET", link)

    # -- rate limit ----------------------------------------------------------------------------------------

    def _read_quota(self, response: requests.Response) -> None:
        remaining = response.headers.get("X-AircallApi-Remaining")
        reset = response.headers.get("X-AircallApi-Reset")
        if remaining is not None and remaining.strip().isdigit():
            self._remaining = int(remaining)
        if reset is not None:
            with contextlib.suppress(ValueError):
                self._reset_at = float(reset)

    def _wait_for_quota(self) -> None:
        if self._remaining is not None and self._remaining <= 0:
            delay = self._reset_at - time.time()
            if delay > 0:
                self.log.waits += 1
                self.log.seconds += delay
                self.sleep(delay)
            self._remaining = None

    def _backoff(self, attempt: int) -> None:
        self.sleep(min(30.0, 0.5 * 2**attempt) * random.uniform(0.5, 1.0))

    # -- resources -----------------------------------------------------------------------------------------

    def webhooks(self) -> list[dict[str, Any]]:
        return [w for page, _ in self.pages("webhooks", "webhooks", {"per_page": 50}) for w in page]

    def create_webhook(self, url: str, events: list[str], name: str) -> dict[str, Any]:
        body = {"custom_name": name, "url": url, "events": events}
        return self.request("POST", "webhooks", json=body).get("webhook") or {}

    def numbers(self) -> list[dict[str, Any]]:
        return [n for page, _ in self.pages("numbers", "numbers", {"per_page": 50}) for n in page]


def _retry_after(response: requests.Response) -> float:
    value = response.headers.get("Retry-After", "")
    if value.strip().isdigit():
        return float(value)
    reset = response.headers.get("X-AircallApi-Reset")
    try:
        return max(float(reset) - time.time(), 1.0) if reset else 1.0
    except ValueError:
        return 1.0
