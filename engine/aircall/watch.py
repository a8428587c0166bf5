"""Whether Aircall is still sending: the account's webhooks that carry this server's token, looked at now and then.

Aircall turns off a webhook whose deliveries keep failing (the server down, answering errors, or too slow) and
sends nothing more until it is turned on again; it tells the account's admins by email, who may not be the
people running this server, and the server itself would only see silence. With API credentials, each server
process asks Aircall for its webhooks every AIRCALL_WATCH_SECONDS (default 300: one request, a tiny part of
the 60 a minute Aircall allows) and says what it found in /healthz, /metrics and the console; `engine aircall
connect` turns a disabled webhook back on.

The webhooks are told apart by their token, not their URL: the server knows its tokens (AIRCALL_WEBHOOK_TOKEN),
not the address a proxy publishes it under.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from engine.aircall.api import AircallClient, AircallError

log = logging.getLogger("engine.aircall")

WATCH_SECONDS = 300.0

ACTIVE, DISABLED, MISSING, UNKNOWN = "active", "disabled", "missing", "unknown"
STATES = (ACTIVE, DISABLED, MISSING, UNKNOWN)


@dataclass(frozen=True)
class WebhookWatch:
    """What the last look at Aircall's webhooks found."""

    state: str  # ACTIVE, DISABLED (Aircall turned one of ours off), MISSING (none carries our token), UNKNOWN
    checked_at: float
    detail: str  # a sentence an operator can act on
    webhooks: tuple[str, ...] = ()  # the ids of ours

    @property
    def problem(self) -> str | None:
        """The sentence to show as a problem, or None when Aircall is sending."""
        return None if self.state in (ACTIVE, UNKNOWN) else self.detail

    def as_dict(self) -> dict[str, Any]:
        return {"state": self.state, "checked_at": round(self.checked_at, 3), "detail": self.detail,
                "webhooks": list(self.webhooks)}  # fmt: skip


def look(client: AircallClient, tokens: Sequence[str]) -> WebhookWatch:
    """One look: the account's webhooks whose token is one of `tokens`, and whether each is on."""
    now = time.time()
    try:
        webhooks = client.webhooks()
    except AircallError as exc:
        return WebhookWatch(UNKNOWN, now, f"Aircall's API did not say whether the webhook is on: {exc}")
    ours = [w for w in webhooks if isinstance(w, dict) and w.get("token") in tokens]
    ids = tuple(str(w.get("webhook_id") or w.get("id")) for w in ours)
    if not ours:
        return WebhookWatch(
            MISSING,
            now,
            f"No webhook of this Aircall account carries AIRCALL_WEBHOOK_TOKEN ({len(webhooks)} webhook(s) "
            "listed): it was deleted, or the API credentials are another account's. engine aircall connect "
            "--url URL creates one",
        )
    off = [ident for ident, webhook in zip(ids, ours, strict=True) if webhook.get("active") is False]
    if off:
        return WebhookWatch(
            DISABLED,
            now,
            f"Aircall has disabled webhook {', '.join(off)} after failed deliveries and sends nothing to it: "
            "engine aircall connect --url URL turns it back on, and engine backfill fetches what was missed",
            ids,
        )
    return WebhookWatch(ACTIVE, now, f"Aircall's webhook {', '.join(ids)} is on", ids)


class Watcher:
    """Looks every `every` seconds on a daemon thread of its own: a look that waits out Aircall's rate limit or a
    slow answer holds up nothing else, not even the server's shutdown. `latest` is None until the first look."""

    def __init__(
        self,
        client: AircallClient,
        tokens: Sequence[str],
        every: float = WATCH_SECONDS,
        observe: Callable[[WebhookWatch], None] | None = None,
    ) -> None:
        self.client, self.tokens, self.every = client, tuple(tokens), every
        self.observe = observe
        self.latest: WebhookWatch | None = None
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aircall-webhook-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                found = look(self.client, self.tokens)
            except Exception as exc:  # a bug here must not end the watch, nor anything else
                log.exception("watching the Aircall webhook failed")
                found = WebhookWatch(UNKNOWN, time.time(), f"the watch failed: {type(exc).__name__}")
            if found.state != (self.latest.state if self.latest else ACTIVE):
                level = logging.INFO if found.state == ACTIVE else logging.WARNING
                log.log(level, "Aircall webhook: %s", found.detail, extra={"fields": {"state": found.state}})
            self.latest = found
            if self.observe is not None:
                self.observe(found)
            self._stopping.wait(self.every)
