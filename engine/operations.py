"""Operator actions on the outbox, for `engine outbox`: status, and replay of dead letters with the current
mappings (after fixing a mapping, or once Segment accepts what it refused)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from engine.envelope import EnvelopeError, webhook_from_json
from engine.mapping import Mappings
from engine.message import RenderError
from engine.outbox import NewMessage, Outbox, stored_webhook


@dataclass
class ReplayReport:
    replayed: list[int] = field(default_factory=list)  # dead letter ids
    messages: int = 0  # messages enqueued again (new to the outbox)
    failed: list[tuple[int, str]] = field(default_factory=list)  # still not renderable: id, reason


def replay_dead_letters(outbox: Outbox, mappings: Mappings, ids: list[int] | None = None) -> ReplayReport:
    """Re-render each dead letter's webhook with the current mappings and enqueue the messages again.

    The messageIds are the same as the first time, so whatever Segment already had is not duplicated.
    A dead letter that still cannot be rendered stays, with the new reason reported.
    """
    report = ReplayReport()
    for letter in outbox.dead_letters(ids=ids):
        try:
            webhook = webhook_from_json({**json.loads(letter.webhook), "token": "stored"})
        except (EnvelopeError, ValueError) as exc:
            report.failed.append((letter.id, f"stored webhook unreadable: {exc}"))
            continue
        mapping = mappings.get(webhook.event)
        if mapping is None:
            report.failed.append((letter.id, f"no mapping for event {webhook.event!r}"))
            continue
        try:
            encoded = mapping.render_json(webhook)
        except RenderError as exc:
            report.failed.append((letter.id, str(exc)))
            continue
        messages = [NewMessage(message_id, webhook.event, body) for message_id, body in encoded]
        [added] = outbox.enqueue([(stored_webhook(webhook), messages)])
        outbox.mark_replayed([letter.id])
        report.replayed.append(letter.id)
        report.messages += added
    return report
