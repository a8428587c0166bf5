"""`engine aircall connect|webhooks|numbers` through the CLI, against the fake Aircall API (backfill: test_backfill)."""

from __future__ import annotations

import shutil

import pytest
import requests

from engine.aircall.events import catalogue, known_events
from tests.conftest import MAPPINGS


@pytest.fixture
def env(aircall, tmp_path):
    return aircall.settings() | {"ENGINE_DB": str(tmp_path / "outbox.sqlite3")}


def test_connect_creates_the_webhook_prints_its_token_then_finds_it(engine, env, aircall, tmp_path):
    url = "https://bridge.example.com/webhooks/aircall"
    first = engine("aircall", "connect", "--url", url, env=env | {"AIRCALL_EVENTS": "call.ended,user.created"})
    assert first.code == 0, first.err
    token = first.out.strip()
    assert len(token) > 10 and "created webhook" in first.err
    again = engine("aircall", "connect", "--url", url, env=env)
    assert (again.code, again.out.strip()) == (0, token)
    assert "found webhook" in again.err and "events differ" in again.err
    assert aircall.stats()["webhooks"] == 1
    listing = engine("aircall", "webhooks", env=env)
    assert listing.code == 0 and url in listing.out and "2 events" in listing.out and token not in listing.out


def test_connect_turns_back_on_a_webhook_aircall_disabled_keeping_its_token(engine, env, aircall):
    url = "https://bridge.example.com/webhooks/aircall"
    token = engine("aircall", "connect", "--url", url, env=env).out.strip()
    aircall.control(disable_webhooks=True)  # deliveries kept failing
    assert "\tinactive\t" in engine("aircall", "webhooks", env=env).out
    again = engine("aircall", "connect", "--url", url, env=env)
    assert (again.code, again.out.strip()) == (0, token)
    assert "re-enabled webhook wh-1: Aircall had disabled it after failed deliveries" in again.err
    assert aircall.stats()["enabled"] == 1 and aircall.stats()["webhooks"] == 1
    assert "\tactive\t" in engine("aircall", "webhooks", env=env).out
    assert "re-enabled" not in engine("aircall", "connect", "--url", url, env=env).err  # on: nothing to do
    assert aircall.stats()["enabled"] == 1


def test_connect_writes_the_token_to_the_settings_file_keeping_the_old_one(engine, env, tmp_path):
    settings = tmp_path / "bridge.env"
    settings.write_text("SEGMENT_WRITE_KEY=wk\nAIRCALL_WEBHOOK_TOKEN=old-token\n")
    run = engine("aircall", "connect", "--url", "https://h/webhooks/aircall", "--write-env", str(settings), env=env)
    assert run.code == 0, run.err
    token = run.out.strip()
    assert settings.read_text() == f"SEGMENT_WRITE_KEY=wk\nAIRCALL_WEBHOOK_TOKEN={token},old-token\n"
    assert oct(settings.stat().st_mode & 0o777) == "0o600"


def test_connect_refuses_a_settings_file_it_could_not_write_before_creating_anything(engine, env, aircall, tmp_path):
    target = tmp_path / "no-such-folder" / ".env"
    run = engine("aircall", "connect", "--url", "https://h/webhooks/aircall", "--write-env", str(target), env=env)
    assert (run.code, run.out) == (2, "")
    assert run.err == f"engine: --write-env: {target.parent} is not a folder; create it first\n"
    assert aircall.stats()["webhooks"] == 0


def test_numbers_lists_ids_and_digits(engine, env):
    run = engine("aircall", "numbers", env=env)
    assert run.code == 0
    assert run.out.splitlines() == ["id\tdigits\tname\tcountry", "745821\t+33 1 76 36 06 95\tParis Support\tFR"]


def test_bad_or_missing_credentials_are_a_clear_error(engine, env):
    bad = engine("aircall", "numbers", env=env | {"AIRCALL_API_TOKEN": "wrong"})
    assert bad.code == 2
    assert bad.err.strip() == (
        "engine: Aircall refused the API credentials (401): check AIRCALL_API_ID and AIRCALL_API_TOKEN"
    )
    missing = engine("backfill", "--since", "2023-11-15", env={k: v for k, v in env.items() if k != "AIRCALL_API_ID"})
    assert missing.code == 2 and "AIRCALL_API_ID" in missing.err


def account_webhooks(aircall) -> list[dict]:
    settings = aircall.settings()
    auth = (settings["AIRCALL_API_ID"], settings["AIRCALL_API_TOKEN"])
    return requests.get(f"{settings['AIRCALL_API_URL']}/webhooks", auth=auth, timeout=10).json()["webhooks"]


def test_connect_subscribes_every_event_but_the_deprecated_v1_user_events_and_oauth_only_ones(engine, env, aircall):
    run = engine("aircall", "connect", "--url", "https://h/webhooks/aircall", env=env)  # AIRCALL_EVENTS=all
    assert run.code == 0, run.err
    [webhook] = account_webhooks(aircall)
    events = set(webhook["events"])
    v1_users = {e.name for e in catalogue() if e.replaced_by}
    assert events == known_events() - v1_users - {"integration.deleted"}
    assert {"user.created.v2", "transcription.created", "message.received", "call.hold"} <= events
    assert "user.created" not in events  # V1 and V2 both would send every change twice


def test_connect_subscribes_what_aircall_events_lists_even_a_v1_event(engine, env, aircall):
    listed = "user.created,call.ended,call.some_future_event.v3"
    run = engine("aircall", "connect", "--url", "https://h/webhooks/aircall", env=env | {"AIRCALL_EVENTS": listed})
    assert run.code == 0, run.err
    [webhook] = account_webhooks(aircall)
    assert webhook["events"] == ["call.ended", "user.created", "call.some_future_event.v3"]  # the catalogue's order


def test_webhooks_names_what_an_aircall_webhook_sends_that_no_mapping_maps(engine, env, aircall):
    settings = aircall.settings()
    auth = (settings["AIRCALL_API_ID"], settings["AIRCALL_API_TOKEN"])
    body = {"url": "https://h/webhooks/aircall", "events": ["call.ended", "call.some_future_event.v3"]}
    requests.post(f"{settings['AIRCALL_API_URL']}/webhooks", json=body, auth=auth, timeout=10).raise_for_status()
    run = engine("aircall", "webhooks", env=env)
    assert run.code == 0, run.err
    header, *lines = run.out.splitlines()
    assert header == "id\tstate\tevents\turl"
    assert lines[0].startswith("wh-1\tactive\t2 events\t")
    assert lines[1] == "  not mapped (held until a mapping exists): call.some_future_event.v3"


def test_connect_and_webhooks_read_the_events_from_the_mappings_not_their_file_names(engine, env, aircall, tmp_path):
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    text = (mappings / "call.ended.yaml").read_text()
    (mappings / "my_custom.yaml").write_text(text.replace("aircall_event: call.ended", "aircall_event: call.new.v3"))
    (mappings / "call.ended.old.yaml").write_text("# a backup copy, commented out\n")
    settings = env | {"ENGINE_MAPPINGS": str(mappings)}
    run = engine("aircall", "connect", "--url", "https://h/webhooks/aircall", env=settings)
    assert run.code == 0, run.err
    [webhook] = account_webhooks(aircall)
    assert "call.new.v3" in webhook["events"]
    assert not {"my_custom", "call.ended.old"} & set(webhook["events"])
    listing = engine("aircall", "webhooks", env=settings)
    assert "not mapped" not in listing.out  # everything it subscribed is mapped


def test_webhooks_of_an_account_without_any_says_so(engine, env):
    run = engine("aircall", "webhooks", env=env)
    assert (run.code, run.out) == (0, "")
    assert run.err == "no webhook on this account: engine aircall connect --url URL creates one\n"
