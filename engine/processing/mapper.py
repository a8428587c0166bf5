"""One webhook to its Segment messages, or to the reason it is a dead letter.

`process` is the one way a webhook is mapped: the processing worker (live webhooks), the backfill and the
replay of dead letters all call it, so a webhook maps the same whichever way it came in.
"""

from __future__ import annotations

import logging

from engine.aircall.envelope import EnvelopeError, Webhook, parse_json, webhook_from_json
from engine.mapping.load import Mappings
from engine.mapping.message import RenderError
from engine.outbox import NewMessage, PendingWebhook, Processed, StoredWebhook
from engine.processing.fetch import Fetcher, FetchRefused, FetchWaits, fetch_for

log = logging.getLogger("engine.processing")


def process(
    webhook: Webhook,
    stored: StoredWebhook,
    mappings: Mappings,
    row_id: int | None = None,
    fetcher: Fetcher | None = None,
) -> Processed:
    """A webhook's Segment messages, the reason it is a dead letter (kept for a replay after a fix), or that it is
    held because no mapping maps its event."""
    mapping = mappings.get(webhook.event)
    if mapping is None:
        # An event no mapping maps (yet): Aircall added it, or the team has not written its mapping. Held, not
        # lost and not a dead letter: mapped, to the same messageIds, once a mapping for it is loaded.
        return Processed(stored, id=row_id, held=True)
    try:
        webhook = fetch_for(mapping, webhook, fetcher)  # what its mapping reads from Aircall's REST API, if any
    except FetchWaits as exc:
        return Processed(stored, id=row_id, waiting_until=exc.until, waiting_reason=exc.reason)
    except FetchRefused as exc:
        return Processed(stored, dead_reason=str(exc), id=row_id)
    try:
        encoded = mapping.render_json(webhook)
    except RenderError as exc:
        return Processed(stored, dead_reason=str(exc), id=row_id)
    except Exception as exc:
        # Whatever else one webhook's data makes fail (text no encoder can write, say) makes it a dead letter
        # too: raised, it would fail its whole batch again and again, and hold up every webhook behind it.
        log.exception(
            "mapping failed unexpectedly on a webhook; kept as a dead letter",
            extra={"fields": {"event": webhook.event}},
        )
        return Processed(stored, dead_reason=f"{mapping.path.name}: {type(exc).__name__}: {exc}", id=row_id)
    messages = [NewMessage(message_id, webhook.event, body) for message_id, body in encoded]
    return Processed(stored, messages, id=row_id)


def stored_to_webhook(body: bytes) -> Webhook:
    """A stored envelope (token blanked) as a Webhook again. Raises EnvelopeError."""
    return webhook_from_json(parse_json(body))


def process_stored(pending: PendingWebhook, mappings: Mappings, fetcher: Fetcher | None = None) -> Processed:
    stored = StoredWebhook(pending.key, pending.event, pending.body)
    try:
        webhook = stored_to_webhook(pending.body)
    except EnvelopeError as exc:
        return Processed(stored, dead_reason=f"stored webhook unreadable: {exc}", id=pending.id)
    return process(webhook, stored, mappings, pending.id, fetcher)
