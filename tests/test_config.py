"""Settings parse as documented, and a bad value names its setting (and never echoes a secret)."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.config import Environ

from engine.config import ConfigError, load_settings
from engine.events import ALL_EVENTS


def settings(tmp_path: Path, env_file_text: str = "", **env: str):
    env_file = tmp_path / ".env"
    env_file.write_text(env_file_text)
    return load_settings(env_file, Environ(env))


def test_defaults(tmp_path):
    s = settings(tmp_path)
    assert s.events == frozenset(ALL_EVENTS) and len(s.events) == 26
    assert s.numbers is None and s.webhook_tokens == () and s.segment_write_key is None
    assert s.segment_api_url == "https://api.segment.io"
    assert (s.mappings_dir, s.db) == (Path("mappings"), "var/outbox.sqlite3")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("null", set()), ("", set()), (" NULL ", set()), ("call.ended, user.created", {"call.ended", "user.created"})],
)
def test_aircall_events_list_null_or_empty(tmp_path, value, expected):
    assert settings(tmp_path, AIRCALL_EVENTS=value).events == expected


def test_environment_wins_over_env_file(tmp_path):
    s = settings(tmp_path, "AIRCALL_EVENTS=call.ended\nSEGMENT_WRITE_KEY=from-file\n", AIRCALL_EVENTS="user.created")
    assert s.events == {"user.created"} and s.segment_write_key == "from-file"


def test_several_tokens_for_rotation(tmp_path):
    assert settings(tmp_path, AIRCALL_WEBHOOK_TOKEN=" old-token , new-token ").webhook_tokens == (
        "old-token",
        "new-token",
    )


def test_numbers_by_id_or_e164_digits_with_spaces(tmp_path):
    numbers = settings(tmp_path, AIRCALL_NUMBERS="745821, +33 1 76 36 06 95").numbers
    assert numbers.allows(745821, None)
    assert numbers.allows(1, "+33 1 76 36 06 95") and numbers.allows(1, "+33176360695")
    assert not numbers.allows(999, "+49 30 1234567")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AIRCALL_EVENTS", "call ended", "AIRCALL_EVENTS: 'call ended' is not an Aircall event name"),
        ("AIRCALL_NUMBERS", "main-line", "AIRCALL_NUMBERS: 'main-line' is neither a number id nor E.164 digits"),
        ("SEGMENT_API_URL", "api.segment.io", "SEGMENT_API_URL: 'api.segment.io' is not an http(s) URL"),
    ],
)
def test_bad_value_names_the_setting_and_the_value(tmp_path, name, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings(tmp_path, **{name: value})


def test_secrets_stay_out_of_the_repr(tmp_path):
    s = settings(tmp_path, AIRCALL_WEBHOOK_TOKEN="tok-123", SEGMENT_WRITE_KEY="wk-456", AIRCALL_API_TOKEN="api-789")
    assert not {"tok-123", "wk-456", "api-789"} & set(repr(s).replace("'", " ").replace(",", " ").split())
