"""When to try again: one reading of Retry-After and one jittered backoff, for every client that retries
(Segment's delivery, Aircall's REST API)."""

from __future__ import annotations

import email.utils
import random
import time

from engine.digits import ascii_digits


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds before attempt `attempt + 1`: `base` doubled per attempt, at most `cap`, with equal jitter (between
    half and all of the step), so that clients failing together do not come back together."""
    step = min(cap, base * 2 ** min(max(attempt, 0), 30))
    return step / 2 + random.uniform(0, step / 2)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """A Retry-After header in seconds from now, from delta-seconds or an HTTP date; None when absent or
    unreadable; never negative. How long to honour it is the caller's cap."""
    if not value:
        return None
    value = value.strip()
    if ascii_digits(value):
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return max(moment.timestamp() - (time.time() if now is None else now), 0.0)
