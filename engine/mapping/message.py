"""Turning what a mapping rendered into a Segment message: ids, timestamp, identity, library context."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

from jinja2.runtime import Undefined

from engine import LIBRARY_NAME, __version__, fastjson
from engine.aircall.envelope import Webhook, content_fingerprint
from engine.values import iso8601, stable_id, uuid5

_MESSAGE_ID_NAMESPACE = uuid.UUID("0b7f2f4c-4f0e-4c43-8d0e-2f1a9a3c6e11")
MAX_MESSAGE_BYTES = 32 * 1024  # Segment refuses a message over 32 KB with a 400
_VERSION_SUFFIX = re.compile(r"\.v[0-9]{1,3}\Z")


class RenderError(Exception):
    """A mapping produced something that cannot be sent (or failed to run) for this webhook."""


def message_id(webhook: Webhook, index: int | str) -> str:
    """The same webhook always gives the same id, so Aircall's redeliveries and our retries deduplicate.

    A webhook is identified by its event, its object's id, its timestamp and the fingerprint of its data
    (`content_fingerprint`: two different webhooks in one second get different ids). A backfill's webhooks
    have no fingerprint, so that running it again, after the objects have changed, queues nothing twice.
    An object without an id falls back to its content.
    A versioned event (user.created.v2) is identified by its name without the version: the same object at the
    same time is the same news, so a backfill run once before a move from V1 to V2 and once after queues
    nothing twice. Live V1 and V2 webhooks of one change still differ: their data differ (V2 has no numbers).
    """
    object_id = webhook.data.get("id")
    if object_id is None or isinstance(object_id, (dict, list)):  # a tuple: quicker than dict | list
        object_id = "content:" + (webhook.fingerprint or content_fingerprint(webhook.data))
    event = webhook.event
    if event[-3:-1] == ".v" or ".v" in event[-5:]:  # a version suffix: the cheap test first, the exact one then
        event = _VERSION_SUFFIX.sub("", event)
    key = f"{event}\x1f{object_id}\x1f{webhook.timestamp}\x1f{webhook.fingerprint}\x1f{index}"
    return uuid5(_MESSAGE_ID_NAMESPACE, key)


def as_identifier(value: Any, field: str) -> str | None:
    """Segment ids are strings; Aircall's are numbers. Empty and null mean 'no id'."""
    if value is None or isinstance(value, Undefined):
        return None
    if isinstance(value, bool):
        raise RenderError(f"{field} rendered a boolean ({value}), not an id")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    raise RenderError(f"{field} rendered a {type(value).__name__}, not an id")


def finish(raw: dict[str, Any], index: int, webhook: Webhook) -> dict[str, Any]:
    """One complete Segment message from one rendered message spec."""
    kind = raw["type"]
    message: dict[str, Any] = {
        "type": kind,
        "messageId": message_id(webhook, index),
        "timestamp": iso8601(webhook.timestamp),
    }
    user_id = as_identifier(raw.get("userId"), "userId")
    if user_id is not None:
        # anonymousId only when there is no userId: a contact's anonymous profile must never be merged into
        # the profile of the agent who took the call.
        message["userId"] = user_id
    else:
        message["anonymousId"] = (
            as_identifier(raw.get("anonymousId"), "anonymousId")
            or stable_id(webhook.resource, webhook.data.get("id"))
            or message["messageId"]
        )
    if kind == "track":
        event = raw.get("event")
        if not isinstance(event, str) or not event.strip():
            raise RenderError(f"event name rendered {event!r}; a track needs a non-empty name")
        message["event"] = event
        message["properties"] = raw.get("properties") or {}
    else:
        if kind == "group":
            group_id = as_identifier(raw.get("groupId"), "groupId")
            if group_id is None:
                raise RenderError("groupId rendered empty; a group call needs one")
            message["groupId"] = group_id
        message["traits"] = raw.get("traits") or {}
    message["context"] = {"library": {"name": LIBRARY_NAME, "version": __version__}}
    return message


class Encoded(NamedTuple):
    message_id: str
    body: bytes  # compact UTF-8 JSON


def encode(message: dict[str, Any]) -> bytes:
    """The message as Segment receives it: compact UTF-8 JSON, at most 32 KB. Raises RenderError.

    Encoding is where a template's result is checked: whatever JSON cannot carry (NaN, an object that is not
    data, a value the sandbox refused) fails here, once, on the encoding every message needs anyway. The bytes
    are the standard library's (`encode_stdlib`), written by orjson where it writes the same (engine.fastjson).
    """
    try:
        encoded = fastjson.dumps(message)
    except fastjson.Unlike:
        encoded = encode_stdlib(message)
    if len(encoded) > MAX_MESSAGE_BYTES:
        raise RenderError(f"message is {len(encoded)} bytes; Segment's limit is {MAX_MESSAGE_BYTES}")
    return encoded


_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=lambda v: _jsonable(v))


def encode_stdlib(message: dict[str, Any]) -> bytes:
    """What a message's bytes are defined as: the standard library's compact JSON. Raises RenderError."""
    try:
        body = _ENCODER.encode(message)
    except ValueError as exc:  # NaN or Infinity, refused by allow_nan=False
        raise RenderError(f"{message.get('type', 'message')}: {exc}") from None
    try:
        return body.encode()
    except UnicodeEncodeError:  # a lone surrogate: valid as a JSON escape, not as text Segment can store
        raise RenderError(
            f"{message.get('type', 'message')}: text that is not valid Unicode (an unpaired surrogate)"
        ) from None


def _jsonable(value: Any) -> Any:
    if isinstance(value, Undefined):
        # Jinja's own explanation, e.g. access to attribute 'append' of 'list' object is unsafe.
        raise RenderError(value._undefined_message or "a template produced an undefined value")
    if isinstance(value, Iterator):  # `map(...)` without `| list`: what the author meant is the list
        try:
            return list(value)
        except RenderError:
            raise
        except Exception as exc:  # the filter it maps runs only now: `map('round', 'x')` fails here, not before
            raise RenderError(f"{type(exc).__name__}: {exc}") from None
    raise RenderError(f"a template produced a {type(value).__name__}, which JSON cannot carry")
