"""Processing: stored webhooks become Segment messages, after the gateway has answered Aircall.

`process` is the one way a webhook turns into its messages or a dead letter: the worker below (live webhooks),
the backfill and the replay of dead letters all call it, so a webhook maps the same whichever way it came in.

The worker claims the oldest unprocessed webhooks in batches (a lease, so that several `--workers` processes
or replicas never map the same batch), maps them on the event loop in slices of about a millisecond, so that
the webhooks arriving meanwhile are answered without waiting, and commits every message with the webhook
marked processed in one transaction. A kill at any moment loses nothing: an unprocessed webhook is claimed
again when its lease ends, and maps to the same messageIds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from engine.committer import Committer
from engine.envelope import EnvelopeError, Webhook, parse_json, webhook_from_json
from engine.mapping import Mappings
from engine.message import RenderError
from engine.outbox import NewMessage, OutboxUnavailable, PendingWebhook, Processed, StoredWebhook, new_owner

log = logging.getLogger("engine.processing")

SLICE_SECONDS = 0.001  # mapping work done before the event loop gets to answer webhooks again


def process(webhook: Webhook, stored: StoredWebhook, mappings: Mappings, row_id: int | None = None) -> Processed:
    """A webhook's Segment messages, or the reason it is a dead letter (kept for a replay after a fix)."""
    mapping = mappings.get(webhook.event)
    if mapping is None:
        # Start-up refuses an enabled event without a mapping; this is a webhook stored before a mapping was
        # removed, or a dead letter replayed since.
        return Processed(stored, dead_reason=f"no mapping for event {webhook.event!r}", id=row_id)
    try:
        encoded = mapping.render_json(webhook)
    except RenderError as exc:
        return Processed(stored, dead_reason=str(exc), id=row_id)
    messages = [NewMessage(message_id, webhook.event, body) for message_id, body in encoded]
    return Processed(stored, messages, id=row_id)


def stored_to_webhook(body: bytes) -> Webhook:
    """A stored envelope (token blanked) as a Webhook again. Raises EnvelopeError."""
    return webhook_from_json(parse_json(body))


def process_stored(pending: PendingWebhook, mappings: Mappings) -> Processed:
    stored = StoredWebhook(pending.key, pending.event, pending.body)
    try:
        webhook = stored_to_webhook(pending.body)
    except EnvelopeError as exc:
        return Processed(stored, dead_reason=f"stored webhook unreadable: {exc}", id=pending.id)
    return process(webhook, stored, mappings, pending.id)


@dataclass(frozen=True)
class ProcessingPolicy:
    batch: int = 256  # webhooks claimed, mapped and committed together
    lease_seconds: float = 60.0  # a claim not committed by then is taken by another worker (this one died)
    idle_poll_seconds: float = 1.0  # how often to look for webhooks stored by other processes
    pause_seconds: float = 1.0  # after the outbox failed


class Processor:
    def __init__(
        self,
        committer: Committer,
        mappings: Mappings,
        policy: ProcessingPolicy,
        observe: Callable[[Sequence[Processed], list[int]], None] | None = None,
        stored: Callable[[], None] | None = None,
    ) -> None:
        """`observe(batch, new_messages)` after each commit (metrics); `stored()` wakes the delivery."""
        self.committer = committer
        self.outbox = committer.outbox
        self.mappings = mappings
        self.policy = policy
        self.owner = new_owner()
        self._observe = observe or (lambda batch, added: None)
        self._stored = stored or (lambda: None)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def wake(self) -> None:
        """A webhook was stored: map it now rather than at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    self._wake.clear()
                    claimed = await self.committer.call(
                        self.outbox.claim_webhooks, self.policy.batch, self.policy.lease_seconds, self.owner
                    )
                    if claimed:
                        await self._process(claimed)
                    else:
                        await self._sleep(self.policy.idle_poll_seconds)
                except OutboxUnavailable as exc:
                    # What was claimed is taken again when its lease ends; nothing is lost.
                    log.error("processing paused, outbox unavailable: %s", exc)
                    await self._pause()
                except Exception:
                    # The worker must outlive whatever happens: a dead worker is a silent outage.
                    log.exception("processing failed unexpectedly; retrying")
                    await self._pause()
        finally:
            try:
                await self.committer.call(self.outbox.release, self.owner)
            except Exception:
                log.exception("could not hand back claimed webhooks; they are taken again when their lease ends")

    async def _process(self, claimed: list[PendingWebhook]) -> None:
        results: list[Processed] = []
        deadline = time.perf_counter() + SLICE_SECONDS
        for pending in claimed:
            results.append(process_stored(pending, self.mappings))
            if time.perf_counter() > deadline:
                await asyncio.sleep(0)  # let the gateway answer what arrived meanwhile
                deadline = time.perf_counter() + SLICE_SECONDS
        added = await self.committer.call(self.outbox.commit_processed, results)
        for result in results:
            if result.dead_reason is not None:
                log.warning("webhook event=%s kept as dead letter: %s", result.webhook.event, result.dead_reason)
        self._observe(results, added)
        if any(added):
            self._stored()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)

    async def _pause(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=self.policy.pause_seconds)
