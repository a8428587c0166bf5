"""Processing: stored webhooks become Segment messages, after the gateway has answered Aircall.

`process` is the one way a webhook turns into its messages or a dead letter: the worker below (live webhooks),
the backfill and the replay of dead letters all call it, so a webhook maps the same whichever way it came in.

The worker (`work`, run in a process of its own beside the server: engine.processing_process) claims the
oldest unprocessed webhooks in batches (a lease, so that several `--workers` processes or replicas never map
the same batch), maps them, and commits their messages with the webhooks' processed mark in one transaction.
A kill at any moment loses nothing: an unprocessed webhook is claimed again when its lease ends, and maps to
the same messageIds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from engine.envelope import EnvelopeError, Webhook, parse_json, webhook_from_json
from engine.mapping import Mappings
from engine.message import RenderError
from engine.outbox import (
    NewMessage,
    Outbox,
    OutboxUnavailable,
    PendingWebhook,
    Processed,
    StoredWebhook,
    new_owner,
)

log = logging.getLogger("engine.processing")


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
    idle_poll_seconds: float = 1.0  # how long to wait for a wake-up before looking again (other processes)
    pause_seconds: float = 1.0  # after the outbox failed


class Channel(Protocol):
    """How the worker hears of new webhooks and reports what it stored (see engine.processing_process)."""

    def wait(self, seconds: float) -> bool:
        """Block until woken or `seconds` pass; False once the worker must stop."""
        ...

    def stopping(self) -> bool: ...

    def report(self, mapped: int, dead: int, new_messages: int) -> None: ...


def work(outbox: Outbox, mappings: Mappings, policy: ProcessingPolicy, channel: Channel) -> None:
    """Map stored webhooks until told to stop: claim a batch, map it, commit its messages with the processed
    mark, report; wait for a wake-up when there is nothing to claim."""
    owner = new_owner()
    try:
        while not channel.stopping():
            try:
                claimed = outbox.claim_webhooks(policy.batch, policy.lease_seconds, owner)
                if not claimed:
                    if not channel.wait(policy.idle_poll_seconds):
                        return
                    continue
                results = [process_stored(pending, mappings) for pending in claimed]
                added = outbox.commit_processed(results)
            except OutboxUnavailable as exc:
                # What was claimed is taken again when its lease ends; nothing is lost.
                log.error("processing paused, outbox unavailable: %s", exc)
                channel.wait(policy.pause_seconds)
                continue
            except Exception:
                # The worker must outlive whatever happens: a dead worker is a silent outage.
                log.exception("processing failed unexpectedly; retrying")
                channel.wait(policy.pause_seconds)
                continue
            dead = 0
            for result in results:
                if result.dead_reason is not None:
                    dead += 1
                    log.warning("webhook event=%s kept as dead letter: %s", result.webhook.event, result.dead_reason)
            channel.report(len(results) - dead, dead, sum(added))
    finally:
        try:
            outbox.release(owner)
        except Exception:
            log.exception("could not hand back claimed webhooks; they are taken again when their lease ends")
