"""The delivery worker: outbox batches to Segment, retried until they land or are dead-lettered with a reason.

- 2xx: acknowledged.
- 400/413 for a batch: split in halves and sent again, until the message Segment refuses is alone; that one
  goes to the dead letters with Segment's answer, the others are delivered.
- 429, 5xx, timeouts, connection errors, a refused write key: retried with exponential backoff and jitter,
  after Retry-After when Segment gives one. The worker pauses for the same delay, so an outage costs one
  request per backoff step rather than one per batch. A message still failing past the maximum age is
  dead-lettered.
It never blocks the webhook path: sends run in a thread, outbox work on the committer's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from engine.outbox import Claimed, OutboxUnavailable, new_owner
from engine.outbox.committer import Committer
from engine.segment.destination import Answer, Destination, Outcome, split_batches

log = logging.getLogger("engine.delivery")


@dataclass(frozen=True)
class DeliveryPolicy:
    claim_limit: int = 1000  # messages claimed at once; sent as as many 500 KB requests as they need
    lease_seconds: float = 60.0  # a claim not settled by then is due again (the worker died)
    backoff_base: float = 1.0
    backoff_cap: float = 600.0
    max_age_seconds: float = 72 * 3600.0
    idle_poll_seconds: float = 1.0  # how often to look for work from other processes or due retries
    prune_every_seconds: float = 3600.0
    retention_seconds: float = 7 * 24 * 3600.0

    def backoff(self, attempts: int) -> float:
        """Exponential, capped, with 'equal jitter': between half and all of the step."""
        step = min(self.backoff_cap, self.backoff_base * 2 ** min(attempts, 30))
        return step / 2 + random.uniform(0, step / 2)


@dataclass
class DeliveryState:
    """What /healthz tells about delivery."""

    last_error: str | None = None
    last_error_at: float | None = None
    last_success_at: float | None = None
    paused_until: float = 0.0


class Delivery:
    def __init__(
        self,
        committer: Committer,
        client: Destination | None,
        policy: DeliveryPolicy,
        observe: Callable[[str, int, Answer | None], None] | None = None,
    ) -> None:
        """`observe(kind, count, answer)` reports delivered/retried/dead counts and answers (metrics)."""
        self.committer = committer
        self.outbox = committer.outbox
        self.client = client
        self.policy = policy
        self.owner = new_owner()
        self.state = DeliveryState()
        self._observe = observe or (lambda kind, count, answer: None)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._last_prune = 0.0

    def wake(self) -> None:
        """New messages were committed: no need to wait for the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        if self.client is None:
            log.warning("SEGMENT_WRITE_KEY is not set: messages are kept in the outbox and not sent")
            await self._stopping.wait()
            return
        try:
            while not self._stopping.is_set():
                try:
                    await self._prune_now_and_then()
                    claimed = await self.committer.call(
                        self.outbox.claim, self.policy.claim_limit, self.policy.lease_seconds, self.owner
                    )
                    if claimed:
                        await self._deliver(claimed)
                    else:
                        await self._idle()
                except OutboxUnavailable as exc:
                    # Disk full or read-only: what was claimed becomes due again when its lease ends; an ack
                    # that could not be written means Segment gets those messages twice, and deduplicates them.
                    self._error(f"outbox unavailable: {exc}")
                    log.error("delivery paused, outbox unavailable", extra={"fields": {"error": str(exc)}})
                    await self._pause(self.policy.idle_poll_seconds)
                except Exception:
                    # Whatever happens, the worker must outlive it: a dead worker is a silent outage.
                    log.exception("delivery failed unexpectedly; retrying")
                    await self._pause(self.policy.idle_poll_seconds)
        finally:
            try:
                await self.committer.call(self.outbox.release, self.owner)
            except Exception:  # the outbox may be the reason we stop
                log.exception("could not hand back claimed messages; they are retried when their lease ends")
            self.client.close()

    async def _deliver(self, claimed: list[Claimed]) -> None:
        runs = split_batches([len(c.body) for c in claimed], self.client.max_batch_bytes)
        for position, run in enumerate(runs):
            if self._stopping.is_set():
                await self._postpone([c for r in runs[position:] for c in claimed[r]], 0.0)
                return
            delay = await self._send(claimed[run])
            if delay is not None:  # Segment is failing: hand the rest back and pause
                await self._postpone([c for r in runs[position + 1 :] for c in claimed[r]], delay)
                await self._pause(delay)
                return

    async def _send(self, batch: list[Claimed]) -> float | None:
        """Send one batch (bisecting on rejection). Returns the pause to take when Segment must be retried."""
        answer = await asyncio.to_thread(self.client.send, [c.body for c in batch])
        self._observe("request", len(batch), answer)
        fields: dict[str, object] = {"messages": len(batch), "status": answer.status, "outcome": answer.outcome.value}
        if answer.outcome is not Outcome.DELIVERED:
            fields["reason"] = answer.detail
        log.info("delivery", extra={"fields": fields | {"ms": round(answer.seconds * 1000, 1)}})
        if answer.outcome is Outcome.DELIVERED:
            await self.committer.call(self.outbox.ack, [c.id for c in batch])
            self.state.last_success_at = time.time()
            self._observe("delivered", len(batch), answer)
            return None
        if answer.outcome is Outcome.REJECTED:
            if len(batch) == 1:
                await self.committer.call(self.outbox.dead, [batch[0].id], answer.detail)
                self._observe("dead", 1, answer)
                log.warning(
                    "dead-lettered", extra={"fields": {"message_id": batch[0].message_id, "reason": answer.detail}}
                )
                return None
            middle = len(batch) // 2
            for half in (batch[:middle], batch[middle:]):
                delay = await self._send(half)
                if delay is not None:
                    return delay
            return None
        return await self._retry(batch, answer)

    async def _retry(self, batch: list[Claimed], answer: Answer) -> float:
        self._error(answer.detail)
        now = time.time()
        too_old = [c for c in batch if now - c.created_at > self.policy.max_age_seconds]
        if too_old:
            hours = self.policy.max_age_seconds / 3600
            reason = f"not delivered within {hours:g} hours; last answer: {answer.detail}"
            await self.committer.call(self.outbox.dead, [c.id for c in too_old], reason)
            self._observe("dead", len(too_old), answer)
            log.warning("dead-lettered", extra={"fields": {"messages": len(too_old), "reason": reason}})
        rest = [c for c in batch if c not in too_old]
        attempts = max((c.attempts for c in batch), default=0)
        # Retry-After is honoured up to the cap: a proxy's "Retry-After: 86400" must not stop delivery for a
        # day. Asking again too early costs one more 429.
        delay = (
            min(answer.retry_after, self.policy.backoff_cap)
            if answer.retry_after is not None
            else self.policy.backoff(attempts)
        )
        if rest:
            await self.committer.call(self.outbox.retry, [c.id for c in rest], delay, answer.detail, self.owner)
            self._observe("retried", len(rest), answer)
        return delay

    async def _postpone(self, claimed: list[Claimed], delay: float) -> None:
        if claimed:
            await self.committer.call(
                self.outbox.retry, [c.id for c in claimed], delay, None, self.owner, attempted=False
            )

    async def _idle(self) -> None:
        """Wait for new messages, a due retry, or the next poll, whichever comes first."""
        next_due = await self.committer.call(self.outbox.next_due)
        wait = self.policy.idle_poll_seconds
        if next_due is not None:
            wait = min(wait, max(next_due - time.time(), 0.0))
        await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        """Idle until woken by new messages, or for `seconds`."""
        self._wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(seconds, 0.0))

    async def _pause(self, seconds: float) -> None:
        """Segment is failing: wait out the delay whatever arrives meanwhile, unless the server stops."""
        self.state.paused_until = time.time() + seconds
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=max(seconds, 0.0))

    async def _prune_now_and_then(self) -> None:
        now = time.time()
        if now - self._last_prune >= self.policy.prune_every_seconds:
            self._last_prune = now
            removed = await self.committer.call(self.outbox.prune, self.policy.retention_seconds)
            if removed:
                log.info("pruned delivered messages", extra={"fields": {"messages": removed}})

    def _error(self, detail: str) -> None:
        self.state.last_error = detail
        self.state.last_error_at = time.time()
