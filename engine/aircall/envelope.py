"""The envelope Aircall POSTs: parsed from bytes and checked against schema/aircall-webhook.schema.json."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from jsonschema.exceptions import best_match

from engine import fastjson
from engine.aircall.events import EVENT_NAME, EVENT_NAME_MAX, RESOURCE_NAME
from engine.schemas import webhook_validator


class EnvelopeError(ValueError):
    """The body is not JSON or not an Aircall webhook; the message says why, in one line."""


@dataclass(frozen=True)
class Webhook:
    resource: str
    event: str
    timestamp: int  # unix seconds
    token: str
    data: dict[str, Any]
    # False for the webhooks a backfill builds: their ids must not change when an object has changed since the
    # last run, so they are identified by event, object and time alone (see engine.mapping.message.message_id).
    identified_by_content: bool = True
    # What processing read from Aircall's REST API for this webhook, as its mapping's `fetch` declares: name ->
    # the answer. Empty until then; never part of the messageIds (they come from the webhook alone).
    fetched: dict[str, Any] = field(default_factory=dict, compare=False)

    @cached_property
    def fingerprint(self) -> str:
        """What tells apart two webhooks of one event, object and second (see content_fingerprint). Computed on
        first use, so that a refused or ignored webhook does not pay for it."""
        return content_fingerprint(self.data) if self.identified_by_content else ""

    def template_variables(self) -> dict[str, Any]:
        """What a mapping template can read. The token is not among them."""
        return {
            "data": self.data,
            "event": self.event,
            "resource": self.resource,
            "timestamp": self.timestamp,
            "fetched": self.fetched,
        }


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (_INF, -_INF):  # not quoted: the body is not authenticated yet when this is answered
        raise ValueError("a number is out of range")
    return value


_INF = float("inf")


MAX_DEPTH = 64  # Aircall's payloads are a handful of levels deep


def parse_json(body: bytes | str) -> Any:
    """Strict JSON: no NaN or Infinity, no number too large for a double (Python accepts them; Segment and
    warehouses do not), no integer beyond Python's 4,300 digits, no nesting deeper than MAX_DEPTH.

    The parser's own limit is Python's recursion limit, measured from wherever it is called: a document just
    under it would fail later, a few frames deeper, in whatever walks the data again (the messageId's digest,
    the encoder). A fixed limit holds the same everywhere.
    """
    try:
        document = fastjson.loads(body)  # what it decodes, the standard library decodes the same way
    except fastjson.Unlike:
        document = _strict_loads(body)
    openers = body.count(b"[") + body.count(b"{") if isinstance(body, bytes) else body.count("[") + body.count("{")
    if openers > MAX_DEPTH and _deeper_than(document, MAX_DEPTH):  # counting costs 1 µs, the walk 30
        raise EnvelopeError(f"body is not valid JSON: nested deeper than {MAX_DEPTH} levels")
    return document


def _strict_loads(body: bytes | str) -> Any:
    try:
        return json.loads(body, parse_constant=_refuse_constant, parse_float=_finite)
    except RecursionError:
        raise EnvelopeError(f"body is not valid JSON: nested deeper than {MAX_DEPTH} levels") from None
    except UnicodeDecodeError:
        raise EnvelopeError("body is not valid JSON: not UTF-8 text") from None
    except ValueError as exc:
        raise EnvelopeError(f"body is not valid JSON: {exc}") from None


def _deeper_than(document: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels (without recursing, whatever the depth)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > limit:
            return True
        children = value.values() if type(value) is dict else value if type(value) is list else ()
        stack.extend((child, depth + 1) for child in children if type(child) is dict or type(child) is list)
    return False


_RESOURCE = re.compile(RESOURCE_NAME + r"\Z")
_EVENT = re.compile(EVENT_NAME + r"\Z")


def clearly_valid(document: dict[str, Any]) -> bool:
    """A quick check that implies the schema's: what passes it is valid (tests prove the implication).

    jsonschema costs about 100 µs an envelope on the webhook path; this costs 2. Anything this does not
    clearly accept goes through the schema, which decides and explains.
    """
    resource, event, timestamp = document.get("resource"), document.get("event"), document.get("timestamp")
    token = document.get("token", "")
    return bool(
        type(resource) is str
        and _RESOURCE.match(resource)
        and type(event) is str
        and len(event) <= EVENT_NAME_MAX
        and _EVENT.match(event)
        and type(timestamp) is int
        and 0 <= timestamp <= 253402300799
        and type(token) is str
        and len(token) <= 512
        and type(document.get("data")) is dict
    )


def webhook_from_json(document: Any) -> Webhook:
    """Check a decoded document against the envelope schema and return the webhook it carries."""
    if not isinstance(document, dict):
        raise EnvelopeError(f"not an Aircall webhook: expected a JSON object, got {type(document).__name__}")
    if not clearly_valid(document):  # the quick path matched the names already; the schema's path must too
        error = best_match(webhook_validator().iter_errors(document))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "envelope"
            if where == "token":  # never echo a secret, even a malformed one
                raise EnvelopeError("not an Aircall webhook: token: must be a string of at most 512 characters")
            raise EnvelopeError(f"not an Aircall webhook: {where}: {_short(error.message)}")
        for name, pattern in (("resource", _RESOURCE), ("event", _EVENT)):
            if not pattern.match(document[name]):  # the schema's `$` lets a final newline through; \Z does not
                raise EnvelopeError(f"not an Aircall webhook: {name}: not a name of dotted letters, digits, '_' or '-'")
    return Webhook(
        resource=document["resource"],
        event=document["event"],
        timestamp=int(document["timestamp"]),  # the schema's integer admits 1.0
        token=document.get("token", ""),
        data=document["data"],
    )


def content_fingerprint(data: dict[str, Any]) -> str:
    """A digest of the webhook's data, with URLs left out.

    Two webhooks of one event, object and second are different news when their data differ: two tags added to a
    call in one second, a contact edited twice by a CRM sync. Their messageIds must differ, or the outbox and
    Segment would each drop the second as a duplicate. A redelivery of the same webhook must keep its ids, and
    Aircall's recording and voicemail links are signed and short-lived, so a payload built again may carry new
    ones: URLs are not hashed.
    Keys are sorted: the order Aircall serialises them in is not a promise. The bytes hashed are those of
    `json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)`, made by orjson
    where it writes the same (engine.fastjson): ids must not depend on which library wrote them.
    """
    try:
        text = without_urls(fastjson.dumps_sorted(data))
    except fastjson.Unlike:
        text = _URL_STRING.sub('""', canonical_json_stdlib(data)).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(text, digest_size=12).hexdigest()


_URL_STRING = re.compile(r'"https?://[^"]*"')


def canonical_json_stdlib(data: Any) -> str:
    """The canonical JSON the digest was defined with, by the standard library."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def without_urls(text: bytes) -> bytes:
    """Every JSON string starting http:// or https:// replaced by "" (_URL_STRING's substitution, on UTF-8 bytes)."""
    return _URL_BYTES.sub(b'""', text)


_URL_BYTES = re.compile(rb'"https?://[^"]*"')


def parse_webhook(body: bytes | str) -> Webhook:
    return webhook_from_json(parse_json(body))


def _short(message: str, limit: int = 200) -> str:
    # jsonschema quotes the offending value, which may be a megabyte of someone's payload.
    return message if len(message) <= limit else message[: limit - 1] + "…"
