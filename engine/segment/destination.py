"""Where delivery sends messages: a Destination takes a batch of encoded messages and answers one Answer.

The delivery worker (engine.segment.delivery) knows only this: how large a batch request may be, how to send
one, and what the answer means (delivered, rejected for good, or to try again). Segment's HTTP API is one
destination (engine.segment.client); a Segment-compatible one (RudderStack's HTTP API, say) is another
instance of it with its own URL and key.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Protocol

_ENVELOPE_ALLOWANCE = 200  # '{"batch":[', '],"sentAt":"…"}' and commas, with room to spare


class Outcome(Enum):
    DELIVERED = "delivered"
    REJECTED = "rejected"  # 400/413: something in the batch can never be accepted
    RETRY = "retry"  # 429, 5xx, timeouts, network errors, a refused write key: try again later


@dataclass(frozen=True)
class Answer:
    outcome: Outcome
    status: int | None  # None when no HTTP answer came back
    detail: str  # for logs, dead letters and /healthz: never the write key
    retry_after: float | None = None
    seconds: float = 0.0


class Destination(Protocol):
    name: str  # for logs, /healthz and dead letters
    max_batch_bytes: int  # a batch request's size limit, its envelope included

    def send(self, messages: list[bytes]) -> Answer:
        """One batch request of these messages (compact JSON each). Blocking: delivery runs it in a thread."""
        ...

    def close(self) -> None: ...


def split_batches(sizes: list[int], limit: int) -> list[slice]:
    """Consecutive runs of messages whose batch request stays within `limit` bytes."""
    runs, start, total = [], 0, _ENVELOPE_ALLOWANCE
    for index, size in enumerate(sizes):
        if index > start and total + size + 1 > limit:
            runs.append(slice(start, index))
            start, total = index, _ENVELOPE_ALLOWANCE
        total += size + 1
    if start < len(sizes):
        runs.append(slice(start, len(sizes)))
    return runs
