"""Settings parse as documented, and a bad value names its setting (and never echoes a secret)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from starlette.config import Environ

from engine.config import ConfigError, load_settings


def settings(tmp_path: Path, env_file_text: str = "", **env: str):
    env_file = tmp_path / ".env"
    env_file.write_text(env_file_text)
    return load_settings(env_file, Environ(env))


def test_defaults(tmp_path):
    s = settings(tmp_path)
    # Every event, those Aircall will add included: nothing it sends is left out unless the user says so.
    assert s.events.everything and "call.ended" in s.events and "call.some_future_event.v3" in s.events
    assert s.numbers is None and s.webhook_tokens == () and s.segment_write_key is None
    assert s.segment_api_url == "https://api.segment.io"
    assert (s.mappings_dir, s.db) == (Path("mappings"), "var/outbox.sqlite3")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("null", set()),
        ("", set()),
        (" NULL ", set()),
        ("call.ended, user.created.v2", {"call.ended", "user.created.v2"}),
        ("call.some_future_event.v3", {"call.some_future_event.v3"}),
    ],
)
def test_aircall_events_list_null_or_empty(tmp_path, value, expected):
    events = settings(tmp_path, AIRCALL_EVENTS=value).events
    assert events.listed == expected and not events.everything
    assert "call.hold" not in events


@pytest.mark.parametrize("value", ["all", " ALL "])
def test_aircall_events_all_takes_every_event(tmp_path, value):
    events = settings(tmp_path, AIRCALL_EVENTS=value).events
    assert events.everything and events.describe() == "all" and "user.created.v2" in events


def test_aircall_events_all_cannot_be_part_of_a_list(tmp_path):
    with pytest.raises(ConfigError, match="'all' stands alone"):
        settings(tmp_path, AIRCALL_EVENTS="all,call.ended")


def test_environment_wins_over_env_file(tmp_path):
    s = settings(tmp_path, "AIRCALL_EVENTS=call.ended\nSEGMENT_WRITE_KEY=from-file\n", AIRCALL_EVENTS="user.created")
    assert s.events.listed == {"user.created"} and s.segment_write_key == "from-file"


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
    s = settings(
        tmp_path, AIRCALL_WEBHOOK_TOKEN="tok-123", SEGMENT_WRITE_KEY="wk-456", AIRCALL_API_TOKEN="api-789",
        ENGINE_CONSOLE_TOKEN="console-7f3a9c2e5b",
    )  # fmt: skip
    words = set(repr(s).replace("'", " ").replace(",", " ").split())
    assert not {"tok-123", "wk-456", "api-789", "console-7f3a9c2e5b"} & words


def test_console_is_off_unless_its_token_is_set_and_a_short_token_is_refused_unechoed(tmp_path):
    assert settings(tmp_path).console_token is None
    assert settings(tmp_path, ENGINE_CONSOLE_TOKEN=" 7f3a9c2e5b8d1046 ").console_token == "7f3a9c2e5b8d1046"
    with pytest.raises(ConfigError, match=r"^ENGINE_CONSOLE_TOKEN: must be at least 16 characters") as refused:
        settings(tmp_path, ENGINE_CONSOLE_TOKEN="short-secret")
    assert "short-secret" not in str(refused.value)
    guessable_tokens = ("a" * 16, "ab" * 16, "abcabcabcabcabcabcab", "a" * 79 + "b", "0123456789abcdef",
                        "changemechangemechangeme", "qwertyuiopasdfgh", "passwordpassword")  # fmt: skip
    for guessable in guessable_tokens:
        with pytest.raises(ConfigError, match=r"^ENGINE_CONSOLE_TOKEN: too easy to guess") as refused:
            settings(tmp_path, ENGINE_CONSOLE_TOKEN=guessable)
        assert guessable not in str(refused.value)
    assert settings(tmp_path, ENGINE_CONSOLE_TOKEN="Tr0ub4dor&3-horse").console_token  # 17 characters, 15 different


# -- through the command line: every bad setting is one line on stderr and exit 2 ------------------------------


def engine_main(capsys, monkeypatch, tmp_path, env_file: bytes = b"", *args: str, **env: str):
    """`engine --env-file FILE validate MAPPINGS` in-process, with these settings; (exit code, stderr)."""
    from engine.cli import main
    from tests.conftest import MAPPINGS

    for name in list(os.environ):
        if name.startswith(("AIRCALL_", "SEGMENT_", "ENGINE_")):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "settings.env"
    path.write_bytes(env_file)
    code = main(["--env-file", str(path), *(args or ("validate", str(MAPPINGS)))])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("SEGMENT_API_URL", "http://127.0.0.1:abc", "has no valid port (1 to 65535)"),
        ("SEGMENT_API_URL", "http://[oops", "is not an http(s) URL"),
        ("SEGMENT_API_URL", "http://127.0.0.1:70000", "has no valid port (1 to 65535)"),
        ("SEGMENT_API_URL", "http://127.0.0.1:0", "has no valid port (1 to 65535)"),
        ("SEGMENT_API_URL", "https://:443", "is not an http(s) URL"),
        ("AIRCALL_API_URL", "http://api host/v1", "is not an http(s) URL"),
        ("SEGMENT_TIMEOUT_SECONDS", "inf", "must be between 0.1 and 3600"),
        ("ENGINE_BODY_TIMEOUT_SECONDS", "nan", "must be between 0.1 and 3600"),
        ("ENGINE_LEASE_SECONDS", "inf", "must be between 1 and 86400"),
        ("ENGINE_MAX_AGE_HOURS", "1e400", "must be between 0.001 and 87600"),
        ("ENGINE_RETENTION_DAYS", "-1", "must be between 0 and 3650"),
        ("ENGINE_MAX_BODY_BYTES", "9" * 40, "must be between 1024 and 104857600"),
        ("ENGINE_BACKOFF_BASE_SECONDS", "700", "must not exceed ENGINE_BACKOFF_CAP_SECONDS (600)"),
        ("ENGINE_BACKOFF_CAP_SECONDS", "0.5", "must be at least ENGINE_BACKOFF_BASE_SECONDS (1)"),
        ("AIRCALL_NUMBERS", "1" * 38, "is neither a number id nor E.164 digits"),  # E.164: 15 digits at most
        ("AIRCALL_NUMBERS", "¹²³", "is neither a number id nor E.164 digits"),  # isdigit() says yes, int() no
        ("AIRCALL_NUMBERS", "٧٤٥٨٢١", "is neither a number id nor E.164 digits"),  # int() reads 745821
    ],
)
def test_a_bad_setting_is_one_line_naming_it_and_its_value(capsys, monkeypatch, tmp_path, name, value, complaint):
    code, err = engine_main(capsys, monkeypatch, tmp_path, b"", **{name: value})
    assert (code, err) == (2, f"engine: {name}: {value!r} {complaint}\n")


def test_env_file_that_is_not_utf8_is_one_line_exit_2(capsys, monkeypatch, tmp_path):
    code, err = engine_main(capsys, monkeypatch, tmp_path, b"SEGMENT_WRITE_KEY=k\nAIRCALL_NUMBERS=\xb9\xb2\n")
    assert (code, err) == (2, f"engine: {tmp_path / 'settings.env'}: line 2 is not UTF-8 text\n")


def test_env_file_export_lines_are_read_as_a_shell_reads_them(capsys, monkeypatch, tmp_path):
    env_file = b"# written for a shell\nexport AIRCALL_EVENTS='call ended'\n"
    code, err = engine_main(capsys, monkeypatch, tmp_path, env_file)
    assert (code, err) == (2, "engine: AIRCALL_EVENTS: 'call ended' is not an Aircall event name (like call.ended)\n")


def test_a_named_env_file_that_does_not_exist_is_refused(capsys, tmp_path):
    from engine.cli import main

    assert main(["--env-file", str(tmp_path / "nope.env"), "validate", "mappings"]) == 2
    assert capsys.readouterr().err == f"engine: settings file {tmp_path / 'nope.env'} not found\n"


def test_writing_the_token_keeps_an_exported_one_for_the_rotation(tmp_path):
    from engine.cli.aircall import write_env_token

    path = tmp_path / ".env"
    path.write_text("export AIRCALL_WEBHOOK_TOKEN=old-token\nexport SEGMENT_WRITE_KEY=wk\n")
    write_env_token(path, "new-token")
    assert path.read_text() == "export AIRCALL_WEBHOOK_TOKEN=new-token,old-token\nexport SEGMENT_WRITE_KEY=wk\n"
    assert load_settings(path, Environ({})).webhook_tokens == ("new-token", "old-token")


def test_env_file_with_a_byte_order_mark_and_comments_after_values_reads_as_a_shell_would(tmp_path):
    from engine.config import load_settings

    settings_file = tmp_path / "settings.env"
    settings_file.write_bytes(
        b"\xef\xbb\xbfAIRCALL_WEBHOOK_TOKEN=new-token # the one Aircall sends since Monday\n"
        b"ENGINE_LEASE_SECONDS=30  # shorter in tests\n"
        b'SEGMENT_WRITE_KEY="key # with a hash"\n'
    )
    settings = load_settings(settings_file, environ_={})
    assert settings.webhook_tokens == ("new-token",)
    assert settings.lease_seconds == 30
    assert settings.segment_write_key == "key # with a hash"


def test_transcripts_belong_to_the_number_their_call_was_on_when_numbers_are_given_by_id(tmp_path):
    from engine.aircall.envelope import webhook_from_json
    from engine.aircall.selection import Selection
    from tests.harness import sample

    transcript = webhook_from_json(sample("transcription.created"))  # number_id 745821, no digits
    realtime = webhook_from_json(sample("realtime_transcription.utterances_received"))  # data.call.number_id
    user = webhook_from_json(sample("user.created.v2"))

    def answers(numbers: str) -> list[str | None]:
        chosen = settings(tmp_path, AIRCALL_NUMBERS=numbers)
        selection = Selection(chosen.events, chosen.numbers)
        return [selection.skip_reason(w) for w in (transcript, realtime, user)]

    inactive = "number not active (AIRCALL_NUMBERS)"
    assert answers("745821") == [None, None, None]
    assert answers("111") == [inactive, inactive, None]
    # Digits only: these events name their number by id, which cannot be told from digits here: they pass.
    assert answers("+49 30 1234567") == [None, None, None]


def test_a_settings_file_that_is_a_folder_says_so(engine, tmp_path):
    run = engine("--env-file", str(tmp_path), "outbox", "status")
    assert (run.code, run.err) == (2, f"engine: settings file {tmp_path} is a folder; name the file in it\n")
