"""Turning what a mapping rendered into a Segment message: ids, timestamp, identity, library context."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from jinja2.runtime import Undefined

from engine import LIBRARY_NAME, __version__
from engine.envelope import Webhook
from engine.templating import stable_id

_MESSAGE_ID_NAMESPACE = uuid.UUID("0b7f2f4c-4f0e-4c43-8d0e-2f1a9a3c6e11")
MAX_MESSAGE_BYTES = 32 * 1024  # Segment refuses a message over 32 KB with a 400


class RenderError(Exception):
    """A mapping produced something that cannot be sent (or failed to run) for this webhook."""


def message_id(webhook: Webhook, index: int) -> str:
    """The same webhook always gives the same id, so Aircall's redeliveries and our retries deduplicate.

    A webhook is identified by its event, its object's id and its timestamp. The rest of the payload is left
    out on purpose: Aircall's recording URLs are signed afresh on every fetch, so hashing them would make a
    backfill that runs twice send everything twice. An object without an id falls back to its content.
    """
    object_id = webhook.data.get("id")
    if object_id is None or isinstance(object_id, dict | list):
        object_id = (
            "sha256:"
            + hashlib.sha256(
                json.dumps(webhook.data, sort_keys=True, separators=(",", ":"), default=str).encode()
            ).hexdigest()
        )
    name = f"{webhook.event}\x1f{object_id}\x1f{webhook.timestamp}\x1f{index}"
    return str(uuid.uuid5(_MESSAGE_ID_NAMESPACE, name))


def iso_timestamp(unix_seconds: int) -> str:
    return datetime.fromtimestamp(unix_seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


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
        "timestamp": iso_timestamp(webhook.timestamp),
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
        message["properties"] = plain(raw.get("properties") or {}, "properties")
    else:
        if kind == "group":
            group_id = as_identifier(raw.get("groupId"), "groupId")
            if group_id is None:
                raise RenderError("groupId rendered empty; a group call needs one")
            message["groupId"] = group_id
        message["traits"] = plain(raw.get("traits") or {}, "traits")
    message["context"] = {"library": {"name": LIBRARY_NAME, "version": __version__}}
    return message


_SCALARS = (str, int, bool, type(None))


class _NotPlain(Exception):
    def __init__(self, reason: str) -> None:
        self.reason = reason
        self.path = ""


def plain(value: Any, where: str) -> Any:
    """JSON-ready data: lists for generators and tuples, a RenderError for what JSON cannot carry."""
    try:
        return _plain(value)
    except _NotPlain as exc:
        raise RenderError(f"{where}{exc.path}: {exc.reason}") from None


def _plain(value: Any) -> Any:
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise _NotPlain(f"rendered {value}, which JSON cannot carry")
        return value
    if kind is dict:
        out = {}
        for key, item in value.items():
            try:
                out[str(key)] = item if type(item) in _SCALARS else _plain(item)
            except _NotPlain as exc:
                exc.path = f".{key}{exc.path}"
                raise
        return out
    if isinstance(value, Undefined):
        # Jinja's own explanation, e.g. 'list object' has no attribute 'name'.
        raise _NotPlain(value._undefined_message)
    if isinstance(value, list | tuple | Iterator):
        items = []
        for index, item in enumerate(value):
            try:
                items.append(_plain(item))
            except _NotPlain as exc:
                exc.path = f"[{index}]{exc.path}"
                raise
        return items
    raise _NotPlain(f"rendered a {kind.__name__}, which JSON cannot carry")


def encoded_size(message: dict[str, Any]) -> int:
    return len(json.dumps(message, separators=(",", ":"), ensure_ascii=False).encode())
