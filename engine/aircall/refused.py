"""The webhooks the gateway answered without storing them (refused, or ignored by selection), kept in memory for
the console, so that a wrong token is diagnosed on a page and not only in metrics.

Memory, not the outbox: a flood of requests with a bad token must not become a flood of writes, so nothing of
an unauthenticated request is ever written. The last RECENT answers are kept, each a few short strings, with
counts by outcome since the process started. Nothing of an unauthenticated request's content is kept: its
time, status, the gateway's own reason (which never quotes the body: see engine.aircall.webhook) and the
client address as the proxy reports it. The event's name only once the token matched.

Each server process keeps its own (with `--workers N`, the page says it shows the process that answered).
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass

RECENT = 100  # answers kept per process
MAX_TEXT = 200  # characters of a reason or an event name kept: an authenticated sender's envelope error may be long


@dataclass(frozen=True)
class Refused:
    at: float  # unix seconds
    status: int
    outcome: str  # the metrics' outcome: ignored, unauthorized, bad_request, too_large, ...
    reason: str
    event: str | None  # only when the token matched
    client: str | None  # as uvicorn reports it: behind a trusted proxy, the original sender

    @property
    def authenticated(self) -> bool:
        return self.event is not None


class RecentRefusals:
    def __init__(self, size: int = RECENT) -> None:
        self._recent: deque[Refused] = deque(maxlen=size)
        self.counts: Counter[str] = Counter()  # by outcome, since the process started
        self.started = time.time()

    def note(self, status: int, outcome: str, reason: str, event: str | None, client: str | None) -> None:
        """On the event loop, once per answer that stored nothing: an append and an increment."""
        self._recent.append(
            Refused(time.time(), status, outcome, reason[:MAX_TEXT], event[:MAX_TEXT] if event else None, client)
        )
        self.counts[outcome] += 1

    def newest(self) -> list[Refused]:
        return list(reversed(self._recent))
