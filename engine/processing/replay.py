"""Operator actions on the outbox, for `engine outbox`: status, and replay of dead letters with the current
mappings (after fixing a mapping, or once Segment accepts what it refused)."""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.aircall.envelope import EnvelopeError
from engine.mapping.load import Mappings
from engine.outbox import Outbox, StoredWebhook, stored_key
from engine.processing.fetch import Fetcher
from engine.processing.mapper import process, stored_to_webhook


@dataclass
class ReplayReport:
    replayed: list[int] = field(default_factory=list)  # dead letter ids
    messages: int = 0  # messages enqueued again (new to the outbox)
    failed: list[tuple[int, str]] = field(default_factory=list)  # still not renderable: id, reason


def replay_dead_letters(
    outbox: Outbox, mappings: Mappings, ids: list[int] | None = None, fetcher: Fetcher | None = None
) -> ReplayReport:
    """Re-render each dead letter's webhook with the current mappings and enqueue the messages again.

    The messageIds are the same as the first time, so whatever Segment already had is not duplicated.
    A dead letter that still cannot be rendered stays, with the new reason reported.
    """
    report = ReplayReport()
    for letter in outbox.dead_letters(ids=ids):
        try:
            webhook = stored_to_webhook(letter.webhook)
        except EnvelopeError as exc:
            report.failed.append((letter.id, f"stored webhook unreadable: {exc}"))
            continue
        stored = StoredWebhook(stored_key(letter.webhook), webhook.event, letter.webhook)
        result = process(webhook, stored, mappings, fetcher=fetcher)
        if result.held:  # the dead letter stays one: nothing maps it yet
            report.failed.append((letter.id, f"no mapping for event {webhook.event!r}: add it to the mappings"))
            continue
        if result.waiting_until is not None:  # its mapping reads Aircall's REST API, which did not answer
            report.failed.append((letter.id, f"{result.waiting_reason}; try again later"))
            continue
        if result.dead_reason is not None:
            report.failed.append((letter.id, result.dead_reason))
            continue
        [added] = outbox.enqueue([(result.webhook, result.messages)])
        outbox.mark_replayed([letter.id])
        report.replayed.append(letter.id)
        report.messages += added
    return report
