"""Which webhooks are sent: the events the user enabled (AIRCALL_EVENTS) and the Aircall numbers that are active
(AIRCALL_NUMBERS). Call and message events belong to `data.number`, number events to the number itself; the
others (users, contacts, conversation intelligence, ...) are not bound to a number and pass whatever
AIRCALL_NUMBERS says."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.aircall.envelope import Webhook
from engine.config import EventChoice, NumberSelection

_ON_A_NUMBER = frozenset({"call", "message", "number"})


@dataclass(frozen=True)
class Selection:
    events: EventChoice
    numbers: NumberSelection | None  # None: every number is active

    def skip_reason(self, webhook: Webhook) -> str | None:
        """Why this webhook is not sent, or None when it is."""
        if webhook.event not in self.events:
            return "event not enabled (AIRCALL_EVENTS)"
        if self.numbers is None or webhook.resource not in _ON_A_NUMBER:
            return None
        number: Any = webhook.data if webhook.resource == "number" else webhook.data.get("number")
        if isinstance(number, dict):
            number_id, digits = number.get("id"), number.get("digits")
        else:  # a bare id, or nothing: a call we cannot tie to an active number is not sent
            number_id, digits = number, None
        if self.numbers.allows(number_id, digits):
            return None
        return "number not active (AIRCALL_NUMBERS)"
