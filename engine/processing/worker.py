"""The processing worker: stored webhooks become Segment messages, after the gateway has answered Aircall.

`work` runs in a process of its own beside the server (engine.processing.child). It claims the oldest
unprocessed webhooks in batches (a lease, so that several `--workers` processes or replicas never map the same
batch), maps each with engine.processing.mapper, and commits their messages with the webhooks' processed mark
in one transaction. A kill at any moment loses nothing: an unprocessed webhook is claimed again when its lease
ends, and maps to the same messageIds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

from engine.mapping.load import Mappings
from engine.outbox import (
    WAITING_FOR_API,
    Outbox,
    OutboxUnavailable,
    Processed,
    new_owner,
)
from engine.processing.fetch import Fetcher
from engine.processing.mapper import process_stored

log = logging.getLogger("engine.processing")


@dataclass(frozen=True)
class ProcessingPolicy:
    batch: int = 256  # webhooks claimed, mapped and committed together
    lease_seconds: float = 60.0  # a claim not committed by then is taken by another worker (this one died)
    idle_poll_seconds: float = 1.0  # how long to wait for a wake-up before looking again (other processes)
    pause_seconds: float = 1.0  # after the outbox failed


class Channel(Protocol):
    """How the worker hears of new webhooks and reports what it stored (see engine.processing.child)."""

    def wait(self, seconds: float) -> bool:
        """Block until woken or `seconds` pass; False once the worker must stop."""
        ...

    def stopping(self) -> bool: ...

    def report(self, mapped: int, dead: int, new_messages: int) -> None: ...


def work(
    outbox: Outbox, mappings: Mappings, policy: ProcessingPolicy, channel: Channel, fetcher: Fetcher | None = None
) -> None:
    """Map stored webhooks until told to stop: claim a batch, map it, commit its messages with the processed
    mark, report; wait for a wake-up when there is nothing to claim."""
    owner = new_owner()
    released = False
    try:
        while not channel.stopping():
            try:
                if not released:
                    # Webhooks held for want of a mapping, whose event these mappings map: theirs to map now.
                    count = outbox.release_unmapped(mappings.by_event.keys())
                    # And those put back until Aircall's API could answer: with this start's settings
                    # (credentials added, say), tried again at once.
                    outbox.release(WAITING_FOR_API)
                    released = True
                    if count:
                        log.info(
                            "held webhooks of events mapped now go to processing", extra={"fields": {"webhooks": count}}
                        )
                claimed = outbox.claim_webhooks(policy.batch, policy.lease_seconds, owner)
                if not claimed:
                    if not channel.wait(policy.idle_poll_seconds):
                        return
                    continue
                results = [process_stored(pending, mappings, fetcher) for pending in claimed]
                added = outbox.commit_processed(results)
            except OutboxUnavailable as exc:
                # What was claimed is taken again when its lease ends; nothing is lost.
                log.error("processing paused, outbox unavailable", extra={"fields": {"error": str(exc)}})
                channel.wait(policy.pause_seconds)
                continue
            except Exception:
                # The worker must outlive whatever happens: a dead worker is a silent outage.
                log.exception("processing failed unexpectedly; retrying")
                channel.wait(policy.pause_seconds)
                continue
            dead = held = waiting = 0
            reasons: set[str] = set()
            for result in results:
                if result.dead_reason is not None:
                    dead += 1
                    log.warning("webhook kept as dead letter", extra={"fields": _about(result, "dead_lettered")})
                elif result.held:
                    held += 1
                    log.info("webhook held: no mapping maps its event yet", extra={"fields": _about(result, "held")})
                elif result.waiting_until is not None:
                    waiting += 1
                    reasons.add(result.waiting_reason or "")
            if waiting:  # once a batch, not once a webhook: a burst without credentials is one line
                log.warning(
                    "webhooks wait for Aircall's REST API, tried again later",
                    extra={"fields": {"outcome": "waiting", "webhooks": waiting, "reason": "; ".join(sorted(reasons))}},
                )
            channel.report(len(results) - dead - held - waiting, dead, sum(added))
    finally:
        try:
            outbox.release(owner)
        except Exception:
            log.exception("could not hand back claimed webhooks; they are taken again when their lease ends")


def _about(result: Processed, outcome: str) -> dict[str, object]:
    """A processed webhook's log fields: its key (as in the gateway's line) and row id (as the console shows it)."""
    fields: dict[str, object] = {"event": result.webhook.event, "outcome": outcome}
    fields |= {"webhook_key": result.webhook.key, "webhook_id": result.id}
    if result.dead_reason is not None:
        fields["reason"] = result.dead_reason
    return fields
