"""The envelope Aircall POSTs: parsed from bytes and checked against schema/aircall-webhook.schema.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jsonschema.exceptions import best_match

from engine.schemas import webhook_validator


class EnvelopeError(ValueError):
    """The body is not JSON or not an Aircall webhook; the message says why, in one line."""


@dataclass(frozen=True, slots=True)
class Webhook:
    resource: str
    event: str
    timestamp: int  # unix seconds
    token: str
    data: dict[str, Any]

    def template_variables(self) -> dict[str, Any]:
        """What a mapping template can read. The token is not among them."""
        return {"data": self.data, "event": self.event, "resource": self.resource, "timestamp": self.timestamp}


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(body: bytes | str) -> Any:
    """Strict JSON: no NaN or Infinity (Python accepts them, Segment and warehouses do not)."""
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except RecursionError:
        raise EnvelopeError("body is not valid JSON: nested too deeply") from None
    except UnicodeDecodeError:
        raise EnvelopeError("body is not valid JSON: not UTF-8 text") from None
    except ValueError as exc:
        raise EnvelopeError(f"body is not valid JSON: {exc}") from None


def webhook_from_json(document: Any) -> Webhook:
    """Check a decoded document against the envelope schema and return the webhook it carries."""
    if not isinstance(document, dict):
        raise EnvelopeError(f"not an Aircall webhook: expected a JSON object, got {type(document).__name__}")
    error = best_match(webhook_validator().iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "envelope"
        if where == "token":  # never echo a secret, even a malformed one
            raise EnvelopeError("not an Aircall webhook: token: must be a string of at most 512 characters")
        raise EnvelopeError(f"not an Aircall webhook: {where}: {_short(error.message)}")
    return Webhook(
        resource=document["resource"],
        event=document["event"],
        timestamp=document["timestamp"],
        token=document.get("token", ""),
        data=document["data"],
    )


def parse_webhook(body: bytes | str) -> Webhook:
    return webhook_from_json(parse_json(body))


def _short(message: str, limit: int = 200) -> str:
    # jsonschema quotes the offending value, which may be a megabyte of someone's payload.
    return message if len(message) <= limit else message[: limit - 1] + "…"
