"""Aircall's webhook events: the catalogue the engine knows (catalogue.yaml) and what a well-formed name is.

The gateway never refuses a webhook for its event's name: Aircall disables a webhook that keeps failing, and
adds events (and suffixes such as `.v2`) as it goes. A name is only checked to be a sane one (EVENT_NAME), so
that it can be stored, shown and used as a file name; whether it is known or mapped decides nothing there.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import yaml

# Dotted parts of letters, digits, '_' and '-': `call.ended`, `user.created.v2`, `call.some_future_event.v3`;
# 200 characters at most, so that mappings/<event>.yaml is a name every file system takes. The schemas
# (schema/aircall-webhook.schema.json, schema/mapping.schema.json) write the same; a test keeps them equal.
EVENT_NAME = r"[A-Za-z0-9_-]{1,64}(?:\.[A-Za-z0-9_-]{1,64}){1,7}"
EVENT_NAME_MAX = 200
RESOURCE_NAME = r"[A-Za-z0-9_-]{1,64}"
_EVENT_NAME = re.compile(EVENT_NAME + r"\Z")


def is_event_name(text: str) -> bool:
    return len(text) <= EVENT_NAME_MAX and _EVENT_NAME.match(text) is not None


@dataclass(frozen=True)
class KnownEvent:
    name: str
    resource: str
    family: str
    replaced_by: str | None = None  # the event Aircall asks to use instead (V1 user events: their V2)
    only_for_oauth_apps: bool = False


@cache
def catalogue() -> tuple[KnownEvent, ...]:
    """Every event of catalogue.yaml, in its order."""
    text = resources.files("engine.aircall").joinpath("catalogue.yaml").read_text(encoding="utf-8")
    known = []
    for family in yaml.safe_load(text):
        suffix = family.get("replaced_by_suffix")
        for name in family["events"]:
            known.append(
                KnownEvent(
                    name,
                    family["resource"],
                    family["family"],
                    replaced_by=name + suffix if suffix else None,
                    only_for_oauth_apps=bool(family.get("only_for_oauth_apps")),
                )
            )
    return tuple(known)


@cache
def known_events() -> frozenset[str]:
    return frozenset(event.name for event in catalogue())


@cache
def _by_name() -> dict[str, KnownEvent]:
    return {event.name: event for event in catalogue()}


def resource_of(event: str) -> str:
    """The envelope's `resource` for an event: the catalogue's, else the part before the first dot (Aircall
    names most events after the resource they carry: `call.ended` carries a call)."""
    known = _by_name().get(event)
    return known.resource if known is not None else event.partition(".")[0]


def default_subscription(candidates: frozenset[str] | None, mapped: frozenset[str] = frozenset()) -> list[str]:
    """The events a new Aircall webhook subscribes: `candidates` (None: every event of the catalogue and every
    mapped one), less what Aircall has deprecated in favour of an event also subscribed (user.created beside
    user.created.v2) and, unless asked for by name, what only OAuth applications receive. In the catalogue's
    order, then the others."""
    pool = (known_events() | mapped) if candidates is None else candidates
    by_name = _by_name()
    chosen = []
    for name in pool:
        known = by_name.get(name)
        if known is None:
            chosen.append(name)
            continue
        if (known.only_for_oauth_apps and candidates is None) or (known.replaced_by and known.replaced_by in pool):
            continue
        chosen.append(name)
    order = {event.name: index for index, event in enumerate(catalogue())}
    return sorted(chosen, key=lambda name: (order.get(name, len(order)), name))
