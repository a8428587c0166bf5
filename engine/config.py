"""Settings: environment variables first, then a `.env` file; one Settings object, built once at start-up.

A malformed value stops start-up with the setting's name and the bad value, never at the first webhook.
Secrets (tokens, write key, API token) are never part of an error message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from starlette.config import Config, Environ, environ

from engine.events import ALL_EVENTS

_EVENT_NAME = re.compile(r"^[a-z_]{1,64}\.[a-z_]{1,64}$")


class ConfigError(ValueError):
    """A setting has a value the engine cannot use; the message names it."""


@dataclass(frozen=True)
class NumberSelection:
    """Which Aircall numbers are active: by id, or by E.164 digits (spaces and dashes ignored)."""

    ids: frozenset[int] = frozenset()
    digits: frozenset[str] = frozenset()

    def allows(self, number_id: object, number_digits: object) -> bool:
        if isinstance(number_id, int) and number_id in self.ids:
            return True
        return isinstance(number_digits, str) and normalize_digits(number_digits) in self.digits


def normalize_digits(text: str) -> str:
    """'+33 1 76-36 06 95' -> '+33176360695'."""
    digits = "".join(ch for ch in text if ch.isdigit())
    return ("+" + digits) if text.strip().startswith("+") else digits


@dataclass(frozen=True)
class Settings:
    webhook_tokens: tuple[str, ...] = field(default=(), repr=False)
    segment_write_key: str | None = field(default=None, repr=False)
    segment_api_url: str = "https://api.segment.io"
    events: frozenset[str] = frozenset(ALL_EVENTS)
    numbers: NumberSelection | None = None  # None: every number is active
    mappings_dir: Path = Path("mappings")
    db: str = "var/outbox.sqlite3"
    aircall_api_id: str | None = field(default=None, repr=False)
    aircall_api_token: str | None = field(default=None, repr=False)
    aircall_api_url: str = "https://api.aircall.io/v1"


def parse_events(value: str | None) -> frozenset[str]:
    """AIRCALL_EVENTS: unset means all 26; `null` or empty means none; otherwise a comma list.

    An event name Aircall does not (yet) document is accepted here when well formed: whether a mapping
    exists for it is checked against the mappings folder at start-up and by `engine validate`.
    """
    if value is None:
        return frozenset(ALL_EVENTS)
    text = value.strip()
    if text.lower() in ("", "null", "none"):
        return frozenset()
    events = [item.strip() for item in text.split(",") if item.strip()]
    for event in events:
        if not _EVENT_NAME.match(event):
            raise ConfigError(f"AIRCALL_EVENTS: {event!r} is not an Aircall event name (like call.ended)")
    return frozenset(events)


def parse_numbers(value: str | None) -> NumberSelection | None:
    if value is None or not value.strip():
        return None
    ids: set[int] = set()
    digits: set[str] = set()
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        compact = "".join(item.split())
        if compact.isdigit() and not item.startswith("+") and len(compact) < 10:
            ids.add(int(compact))  # Aircall number ids are short integers; phone numbers are E.164
        elif re.fullmatch(r"\+?[\d\s().-]{6,}", item):
            digits.add(normalize_digits(item))
        else:
            raise ConfigError(f"AIRCALL_NUMBERS: {item!r} is neither a number id nor E.164 digits")
    return NumberSelection(frozenset(ids), frozenset(digits))


def _secret_list(value: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (value or "").split(",") if t.strip())


def load_settings(env_file: str | Path | None = ".env", environ_: Environ = environ) -> Settings:
    """Build the settings from the environment, then the `.env` file if there is one."""
    path = Path(env_file) if env_file else None
    config = Config(path if path and path.is_file() else None, environ=environ_)

    def optional(name: str) -> str | None:
        value = config(name, default=None)
        return value.strip() or None if value is not None else None

    def url(name: str, default: str) -> str:
        value = (optional(name) or default).rstrip("/")
        if not re.match(r"^https?://[^\s/]+", value):
            raise ConfigError(f"{name}: {value!r} is not an http(s) URL")
        return value

    return Settings(
        webhook_tokens=_secret_list(optional("AIRCALL_WEBHOOK_TOKEN")),
        segment_write_key=optional("SEGMENT_WRITE_KEY"),
        segment_api_url=url("SEGMENT_API_URL", Settings.segment_api_url),
        events=parse_events(config("AIRCALL_EVENTS", default=None)),
        numbers=parse_numbers(optional("AIRCALL_NUMBERS")),
        mappings_dir=Path(optional("ENGINE_MAPPINGS") or Settings.mappings_dir),
        db=optional("ENGINE_DB") or Settings.db,
        aircall_api_id=optional("AIRCALL_API_ID"),
        aircall_api_token=optional("AIRCALL_API_TOKEN"),
        aircall_api_url=url("AIRCALL_API_URL", Settings.aircall_api_url),
    )
