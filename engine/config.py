"""Settings: environment variables first, then a `.env` file; one Settings object, built once at start-up.

A malformed value stops start-up with the setting's name and the bad value, never at the first webhook.
Secrets (tokens, write key, API token) are never part of an error message.
"""

from __future__ import annotations

import ipaddress
import itertools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from starlette.config import Config, Environ, environ

from engine.aircall.events import is_event_name
from engine.digits import normalize_digits

_NUMBER_ID = re.compile(r"[0-9]{1,9}")  # ASCII digits: see engine.digits
_PHONE = re.compile(r"\+?[0-9 ().-]+")


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


@dataclass(frozen=True)
class EventChoice:
    """AIRCALL_EVENTS: every event Aircall sends (`all`, the default), or the ones listed.

    `all` means every event, known to the catalogue or not, mapped or not: what has no mapping yet is stored and
    held until one is added. A list leaves the others out: they are answered `ignored` and not stored.
    """

    listed: frozenset[str] | None = None  # None: all

    def __contains__(self, event: object) -> bool:
        return self.listed is None or event in self.listed

    @property
    def everything(self) -> bool:
        return self.listed is None

    def describe(self) -> str:
        return "all" if self.listed is None else ",".join(sorted(self.listed)) or "none"


@dataclass(frozen=True)
class Settings:
    webhook_tokens: tuple[str, ...] = field(default=(), repr=False)
    segment_write_key: str | None = field(default=None, repr=False)
    segment_api_url: str = "https://api.segment.io"
    events: EventChoice = EventChoice()
    numbers: NumberSelection | None = None  # None: every number is active
    mappings_dir: Path = Path("mappings")
    db: str = "var/outbox.sqlite3"
    aircall_api_id: str | None = field(default=None, repr=False)
    aircall_api_token: str | None = field(default=None, repr=False)
    aircall_api_url: str = "https://api.aircall.io/v1"
    fetch_rate: int = 10  # requests a minute each server process may make to read what webhooks refer to
    # Seconds between two looks at the account's webhooks (engine.aircall.watch); 0: no look.
    aircall_watch_seconds: float = 300.0
    max_body_bytes: int = 1024 * 1024
    body_timeout_seconds: float = 10.0
    segment_timeout_seconds: float = 10.0
    retention_days: float = 7.0
    max_age_hours: float = 72.0
    lease_seconds: float = 60.0
    backoff_base_seconds: float = 1.0
    backoff_cap_seconds: float = 600.0
    # Readiness (engine.server.health): how long webhooks may wait to be mapped, and messages for Segment,
    # before /readyz and the console say "degraded". An operator tunes them to what their alerting expects.
    degraded_lag_seconds: float = 60.0
    degraded_delivery_seconds: float = 300.0
    log_format: str = "plain"
    log_level: str = "INFO"
    console_token: str | None = field(default=None, repr=False)  # the web console: off while None


def parse_events(value: str | None) -> EventChoice:
    """AIRCALL_EVENTS: unset or `all` means every event; `null`, `none` or empty means none; otherwise a comma
    list of event names (known to Aircall's catalogue or not: Aircall adds events)."""
    if value is None:
        return EventChoice()
    text = value.strip()
    if text.lower() == "all":
        return EventChoice()
    if text.lower() in ("", "null", "none"):
        return EventChoice(frozenset())
    events = [item.strip() for item in text.split(",") if item.strip()]
    for event in events:
        if event.lower() == "all":
            raise ConfigError("AIRCALL_EVENTS: 'all' stands alone; it cannot be part of a list")
        if not is_event_name(event):
            raise ConfigError(f"AIRCALL_EVENTS: {event!r} is not an Aircall event name (like call.ended)")
    return EventChoice(frozenset(events))


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
        if _NUMBER_ID.fullmatch(compact):
            ids.add(int(compact))  # Aircall number ids are short integers; phone numbers are E.164
        elif _PHONE.fullmatch(item) and 6 <= len(normalize_digits(item).lstrip("+")) <= 15:  # E.164: 15 at most
            digits.add(normalize_digits(item))
        else:
            raise ConfigError(f"AIRCALL_NUMBERS: {item!r} is neither a number id nor E.164 digits")
    return NumberSelection(frozenset(ids), frozenset(digits))


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


CONSOLE_TOKEN_MIN_LENGTH = 16


# Estimated as length x log2(the characters it uses): 16 random hex digits rate 40 or more (they carry 64).
CONSOLE_TOKEN_MIN_BITS = 40
# The token README's first command sets, so that a newcomer sees the console a minute after cloning. Anyone can
# read it: `engine serve` refuses it beyond loopback, and the console signs in with it only from this machine.
FIRST_RUN_CONSOLE_TOKEN = "first-run-console-token"


def is_loopback(host: str | None) -> bool:
    """An address of this machine only (127.0.0.0/8, ::1, `localhost`): where the first-run token may be used."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        return False


def _console_token(value: str | None) -> str | None:
    """ENGINE_CONSOLE_TOKEN: unset keeps the console off; set, it must be long and varied enough not to be guessed
    (_guessable: sixteen 'a's, a word repeated, a run along the keyboard are refused; random tokens are not)."""
    if value is None:
        return None
    if len(value) < CONSOLE_TOKEN_MIN_LENGTH:
        raise ConfigError(
            f"ENGINE_CONSOLE_TOKEN: must be at least {CONSOLE_TOKEN_MIN_LENGTH} characters "
            "(`openssl rand -hex 16` makes one)"
        )
    why = _guessable(value)
    if why is not None:
        raise ConfigError(f"ENGINE_CONSOLE_TOKEN: too easy to guess: {why} (`openssl rand -hex 16` makes one)")
    return value


# Runs a person types: digits and letters in order, and the rows of a keyboard.
_RUNS = ("0123456789", "abcdefghijklmnopqrstuvwxyz", "qwertyuiop", "asdfghjkl", "zxcvbnm")
_NEIGHBOURS = {(run[i], run[i + 1]) for run in _RUNS for i in range(len(run) - 1)}
_NEIGHBOURS |= {(b, a) for a, b in _NEIGHBOURS}


def _guessable(token: str) -> str | None:
    """Why a token is too easy to guess, or None. Not a password policy: what random tokens never are and
    typed ones often are (few different characters, a repeated word, a run along the keys or the alphabet)."""
    distinct = len(set(token))
    if distinct < 6 or len(token) * math.log2(distinct) < CONSOLE_TOKEN_MIN_BITS:
        return f"it uses {distinct} different characters"
    if token in (token + token)[1:-1]:  # 'changemechangeme': a shorter text repeated
        return "it repeats a shorter text"
    lowered = token.lower()
    pairs = list(itertools.pairwise(lowered))
    if sum(pair in _NEIGHBOURS for pair in pairs) * 2 > len(pairs):
        return "it runs along the keyboard or the alphabet"
    return None


def _secret_list(value: str | None) -> tuple[str, ...]:
    return tuple(t.strip() for t in (value or "").split(",") if t.strip())


def read_env_file(path: Path) -> dict[str, str]:
    """NAME=value lines, as shells and dotenv readers take them: `export NAME=value` too, comments and blank
    lines skipped, one pair of surrounding quotes removed. UTF-8, strictly: a setting is never half-read."""
    values: dict[str, str] = {}
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    raw = raw.removeprefix(b"\xef\xbb\xbf")  # a byte-order mark some editors write: not part of the first name
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: line {number} is not UTF-8 text") from None
        parsed = parse_env_line(text)
        if parsed is not None:
            values[parsed[0]] = parsed[1]
    return values


def parse_env_line(line: str) -> tuple[str, str] | None:
    """(name, value) of one settings line, or None for a comment or a line without '='."""
    line = line.strip()
    if line.startswith("#") or "=" not in line:
        return None
    name, value = line.split("=", 1)
    name = name.strip().removeprefix("export ").strip()
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        value = value[1:-1]
    elif value.startswith("#"):
        value = ""
    else:  # unquoted, a shell ends the value at a comment: `TOKEN=abc # the old one` is abc
        value = re.split(r"\s#", value, maxsplit=1)[0].rstrip()
    return name, value


def load_settings(
    env_file: str | Path | None = ".env", environ_: Environ = environ, required: bool = False
) -> Settings:
    """Build the settings from the environment, then the `.env` file if there is one.

    `required`: the file was named by the user (--env-file, ENGINE_ENV_FILE), so it must exist.
    """
    path = Path(env_file) if env_file else None
    config = Config(environ=environ_)
    if path is not None and path.is_file():
        config.file_values = read_env_file(path)
    elif path is not None and required:
        if path.is_dir():
            raise ConfigError(f"settings file {path} is a folder; name the file in it")
        raise ConfigError(f"settings file {path} not found")

    def optional(name: str) -> str | None:
        value = config(name, default=None)
        return value.strip() or None if value is not None else None

    def number(name: str, default: float, minimum: float, maximum: float, integer: bool = False) -> float:
        """Finite and within bounds: inf, NaN or 1e400 (a float's inf) would turn into a timer that never fires
        or a lease that never ends."""
        value = optional(name)
        if value is None:
            return default
        try:
            parsed = int(value) if integer else float(value)
        except ValueError:
            raise ConfigError(f"{name}: {value!r} is not a number") from None
        if not minimum <= parsed <= maximum:  # also refuses NaN
            raise ConfigError(f"{name}: {value!r} must be between {_plain(minimum)} and {_plain(maximum)}")
        return parsed

    def choice(name: str, default: str, allowed: tuple[str, ...]) -> str:
        value = (optional(name) or default).lower()
        if value not in allowed:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        return value

    def url(name: str, default: str) -> str:
        value = (optional(name) or default).rstrip("/")
        try:
            parts = urlsplit(value)
        except ValueError:  # an unclosed [ of an IPv6 address, say
            raise ConfigError(f"{name}: {value!r} is not an http(s) URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", value):
            raise ConfigError(f"{name}: {value!r} is not an http(s) URL")
        try:
            port = parts.port  # urllib checks the port only when asked for it
        except ValueError:
            port = 0
        if port == 0:
            raise ConfigError(f"{name}: {value!r} has no valid port (1 to 65535)")
        return value

    backoff_cap = number("ENGINE_BACKOFF_CAP_SECONDS", Settings.backoff_cap_seconds, 0.01, 86400)
    backoff_base = number("ENGINE_BACKOFF_BASE_SECONDS", Settings.backoff_base_seconds, 0.01, 86400)
    if backoff_base > backoff_cap:  # blame the one the user set
        base = optional("ENGINE_BACKOFF_BASE_SECONDS")
        if base is not None:
            raise ConfigError(
                f"ENGINE_BACKOFF_BASE_SECONDS: {base!r} must not exceed ENGINE_BACKOFF_CAP_SECONDS "
                f"({_plain(backoff_cap)})"
            )
        raise ConfigError(
            f"ENGINE_BACKOFF_CAP_SECONDS: {optional('ENGINE_BACKOFF_CAP_SECONDS')!r} must be at least "
            f"ENGINE_BACKOFF_BASE_SECONDS ({_plain(backoff_base)})"
        )
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
        fetch_rate=int(number("ENGINE_FETCH_RATE", Settings.fetch_rate, 1, 60, integer=True)),
        aircall_watch_seconds=number("AIRCALL_WATCH_SECONDS", Settings.aircall_watch_seconds, 0, 86400),
        max_body_bytes=int(number("ENGINE_MAX_BODY_BYTES", Settings.max_body_bytes, 1024, 100 * 2**20, integer=True)),
        body_timeout_seconds=number("ENGINE_BODY_TIMEOUT_SECONDS", Settings.body_timeout_seconds, 0.1, 3600),
        segment_timeout_seconds=number("SEGMENT_TIMEOUT_SECONDS", Settings.segment_timeout_seconds, 0.1, 3600),
        retention_days=number("ENGINE_RETENTION_DAYS", Settings.retention_days, 0, 3650),
        max_age_hours=number("ENGINE_MAX_AGE_HOURS", Settings.max_age_hours, 0.001, 87600),
        lease_seconds=number("ENGINE_LEASE_SECONDS", Settings.lease_seconds, 1, 86400),
        backoff_base_seconds=backoff_base,
        backoff_cap_seconds=backoff_cap,
        degraded_lag_seconds=number("ENGINE_DEGRADED_LAG_SECONDS", Settings.degraded_lag_seconds, 1, 86400),
        degraded_delivery_seconds=number(
            "ENGINE_DEGRADED_DELIVERY_SECONDS", Settings.degraded_delivery_seconds, 1, 86400
        ),
        log_format=choice("ENGINE_LOG_FORMAT", Settings.log_format, ("plain", "json")),
        log_level=choice("ENGINE_LOG_LEVEL", Settings.log_level.lower(), ("debug", "info", "warning", "error")),
        console_token=_console_token(optional("ENGINE_CONSOLE_TOKEN")),
    )
