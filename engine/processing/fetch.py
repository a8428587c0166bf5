"""What a mapping's `fetch` declares, read from Aircall's REST API before its messages are made.

Some webhooks only refer to their content: Aircall's reference says transcription.created may carry only the
call's id, the transcript being read from `GET /v1/calls/{id}/transcription`. A mapping declares what to read
(the path, a template, and when: only if the webhook does not carry the content) and its templates read the
answer as `fetched.<name>`.

Processing never waits on the API: a webhook whose fetch cannot be done now (no credentials, Aircall's rate
limit or its own share of it, the API down or refusing the credentials) is put back for later with the reason
(FetchWaits), and the rest of its batch goes on. What the API answers it will never give (a 404) makes a dead
letter (FetchRefused) that can be replayed. A fetched answer never changes a messageId: ids come from the
webhook alone.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import Any, Protocol

from engine.aircall.api import AircallAuthError, AircallClient, AircallError
from engine.aircall.envelope import Webhook
from engine.config import Settings
from engine.mapping.load import CompiledMapping

NO_CREDENTIALS_RETRY = 300.0  # seconds: the server is restarted with them, or they stay missing
TIMEOUT = 5.0  # seconds for an answer: a transcript is a few hundred KB; a slower API is taken to be down
MAX_ANSWER_BYTES = 8 * 1024 * 1024  # a transcript of an hour is about 100 KB
AUTH_RETRY = 300.0  # the credentials were refused: someone has to change them
FAILURE_RETRY = 60.0  # the API down, or answering 5xx or 429 past its reset
REFUSED = frozenset({400, 404, 410, 413, 422})  # answers that asking again will not change (413: ours, too large)
_PLAIN_PATH = re.compile(r"(?:/[A-Za-z0-9_-]{1,128}){1,8}\Z")


class FetchWaits(Exception):
    """The fetch cannot be done now: the webhook waits until `until` (unix seconds) and is tried again."""

    def __init__(self, reason: str, until: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.until = until


class FetchRefused(Exception):
    """The fetch will never succeed for this webhook as the mapping stands: a dead letter, with the reason."""


class Fetcher(Protocol):
    def get(self, path: str) -> dict[str, Any]:
        """The API's JSON answer for `path`; FetchWaits or FetchRefused."""
        ...


def fetch_for(mapping: CompiledMapping, webhook: Webhook, fetcher: Fetcher | None) -> Webhook:
    """The webhook with what its mapping fetches (itself when there is nothing to fetch)."""
    if not mapping.fetches:
        return webhook
    variables = webhook.template_variables()
    wanted = []
    for fetch in mapping.fetches:
        try:
            if fetch.when is not None and not fetch.when(variables):
                continue
            path = fetch.path(variables)
        except Exception as exc:  # a template raises what its expression can
            raise FetchRefused(f"{mapping.path.name}: fetch.{fetch.name}: {type(exc).__name__}: {exc}") from None
        if isinstance(path, str) and "/None/" in path + "/":  # a field the path reads is missing: null, as text
            raise FetchRefused(
                f"{mapping.path.name}: fetch.{fetch.name}: the path rendered {path!r}: a field it reads is missing"
            )
        if not isinstance(path, str) or not _PLAIN_PATH.match(path):
            shown = repr(path) if len(repr(path)) < 120 else repr(path)[:119] + "…"
            raise FetchRefused(
                f"{mapping.path.name}: fetch.{fetch.name}: the path rendered {shown}, not a plain API path "
                "(letters, digits, '_', '-' and '/')"
            )
        wanted.append((fetch.name, path))
    if not wanted:
        return webhook
    if fetcher is None:
        raise FetchWaits(
            "its mapping reads Aircall's REST API and AIRCALL_API_ID and AIRCALL_API_TOKEN are not set",
            time.time() + NO_CREDENTIALS_RETRY,
        )
    return replace(webhook, fetched={name: fetcher.get(path) for name, path in wanted})


class AircallFetcher:
    """The processing worker's: one request at most per webhook and fetch, never a wait (a webhook that would
    have to wait is put back instead), within `rate` requests a minute of Aircall's 60 for the account.

    Once the API has failed (down, hanging, refusing the credentials), it is not asked again until the webhook
    that found it so is due: the rest of the batch, and the batches after, are put back at once rather than each
    spending a timeout on it, so that the webhooks that fetch nothing are never held up behind them."""

    def __init__(self, client: AircallClient, retry_cap: float = FAILURE_RETRY) -> None:
        client.max_retries = 0
        client.max_throttled = 0
        client.timeout = min(client.timeout, TIMEOUT)
        client.max_answer_bytes = MAX_ANSWER_BYTES
        self.client = client
        self.failure_retry = min(FAILURE_RETRY, retry_cap)  # ENGINE_BACKOFF_CAP_SECONDS caps it, as for Segment
        self.auth_retry = min(AUTH_RETRY, retry_cap)
        self._down: FetchWaits | None = None  # the API's last failure, while it is not to be asked again

    def get(self, path: str) -> dict[str, Any]:
        down = self._down
        if down is not None and time.time() < down.until:
            raise FetchWaits(down.reason, down.until)
        delay = self.client.turn_delay()
        if delay > 0:
            raise FetchWaits(f"Aircall's rate limit: the next request in {delay:.0f} s", time.time() + delay)
        try:
            answer = self.client.request("GET", path)
        except AircallAuthError as exc:
            raise self._failed(str(exc), self.auth_retry) from None
        except AircallError as exc:
            if exc.status in REFUSED:
                raise FetchRefused(f"GET {path}: {exc}") from None
            raise self._failed(f"GET {path}: {exc}", self.failure_retry) from None
        self._down = None
        if not isinstance(answer, dict):
            raise FetchRefused(f"GET {path}: Aircall answered {type(answer).__name__}, not a JSON object")
        return answer

    def _failed(self, reason: str, retry: float) -> FetchWaits:
        self._down = FetchWaits(reason, time.time() + retry)
        return self._down


class WaitingFetcher:
    """The command line's (engine outbox replay, engine backfill): it waits its turn and retries, as the
    backfill's requests do; what still fails is said and the webhook left as it was."""

    def __init__(self, client: AircallClient) -> None:
        self.client = client

    def get(self, path: str) -> dict[str, Any]:
        try:
            answer = self.client.request("GET", path)
        except AircallError as exc:
            if exc.status in REFUSED:
                raise FetchRefused(f"GET {path}: {exc}") from None
            raise FetchWaits(f"GET {path}: {exc}", time.time()) from None
        except ValueError:
            raise FetchWaits(f"GET {path}: Aircall's answer is not JSON", time.time()) from None
        if not isinstance(answer, dict):
            raise FetchRefused(f"GET {path}: Aircall answered {type(answer).__name__}, not a JSON object")
        return answer


def api_client(settings: Settings, rate: int | None = None) -> AircallClient | None:
    """A client of Aircall's REST API with the settings' credentials, or None without them."""
    if not (settings.aircall_api_id and settings.aircall_api_token):
        return None
    return AircallClient(settings.aircall_api_url, settings.aircall_api_id, settings.aircall_api_token, rate=rate)


def waiting_fetcher(settings: Settings) -> WaitingFetcher | None:
    """The command line's fetcher, or None without API credentials."""
    client = api_client(settings)
    return None if client is None else WaitingFetcher(client)


def processing_fetcher(settings: Settings) -> AircallFetcher | None:
    """What processing reads Aircall's REST API with (mappings that `fetch`), or None without credentials."""
    client = api_client(settings, rate=settings.fetch_rate)
    return None if client is None else AircallFetcher(client, retry_cap=settings.backoff_cap_seconds)
