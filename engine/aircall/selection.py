"""Which webhooks are sent: the events the user enabled (AIRCALL_EVENTS) and the Aircall numbers that are active
(AIRCALL_NUMBERS). Call and message events belong to `data.number` (one without is not sent), number events to
the number itself; the others belong to the number they name, when they name one (`data.number_id` of a
transcription or an AI voice agent's call, `data.call.number_id` of real-time utterances): a transcript of a
call on an inactive number is not sent either, when AIRCALL_NUMBERS names numbers by id (these events carry
only the id). Users and contacts are not bound to a number and pass."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from engine.aircall.envelope import Webhook
from engine.config import EventChoice, NumberSelection

_NOT_ON_A_NUMBER = frozenset({"user", "contact"})
_ON_A_NUMBER = frozenset({"call", "message"})  # their number is data.number, and one without is not sent


@dataclass(frozen=True)
class Selection:
    events: EventChoice
    numbers: NumberSelection | None  # None: every number is active

    def skip_reason(self, webhook: Webhook) -> str | None:
        """Why this webhook is not sent, or None when it is."""
        if webhook.event not in self.events:
            return "event not enabled (AIRCALL_EVENTS)"
        if self.numbers is None or webhook.resource in _NOT_ON_A_NUMBER:
            return None
        data = webhook.data
        if webhook.resource == "number":
            number: Any = data
        elif webhook.resource in _ON_A_NUMBER:
            number = data.get("number")
        else:
            call = data.get("call")
            number = (
                data.get("number") or data.get("number_id") or (call.get("number_id") if type(call) is dict else None)
            )
            if number is None:
                return None  # not bound to a number
            if not isinstance(number, dict) and not self.numbers.ids:
                # A bare id, and AIRCALL_NUMBERS gives digits only: which number it is cannot be told here.
                return None
        if isinstance(number, dict):
            number_id, digits = number.get("id"), number.get("digits")
        else:  # a bare id, or nothing: a call we cannot tie to an active number is not sent
            number_id, digits = number, None
        if self.numbers.allows(number_id, digits):
            return None
        return "number not active (AIRCALL_NUMBERS)"
