"""What the shipped mappings promise users about the messages, shown through `engine render`."""

from __future__ import annotations

import json
import os
import subprocess

from tests.conftest import ENGINE, FIXTURES, ROOT


def render(engine, envelope: dict) -> list[dict]:
    run = engine("render", "-", stdin=json.dumps(envelope).encode())
    assert run.code == 0, run.err
    return run.json()


def sample(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_same_webhook_gives_same_message_ids_and_different_webhooks_differ(engine):
    ended = sample("call.ended")
    first, again = render(engine, ended), render(engine, ended)
    assert [m["messageId"] for m in first] == [m["messageId"] for m in again]
    later = {**ended, "timestamp": ended["timestamp"] + 1}
    hungup = {**ended, "event": "call.hungup"}
    other_call = {**ended, "data": {**ended["data"], "id": ended["data"]["id"] + 1}}
    ids = {render(engine, e)[0]["messageId"] for e in (ended, later, hungup, other_call)}
    assert len(ids) == 4


def test_message_id_ignores_the_token_and_fields_that_change_between_fetches(engine):
    ended = sample("call.ended")
    other = json.loads(json.dumps(ended))
    other["token"] = "another-webhook-token"
    other["data"]["recording"] = "https://aircall-recordings.example/2187654321.mp3?X-Amz-Signature=fresh"
    assert render(engine, ended)[0]["messageId"] == render(engine, other)[0]["messageId"]


def test_timestamp_is_the_webhook_time_in_iso_8601_utc(engine):
    [message] = render(engine, {**sample("call.ended"), "timestamp": 1700000000})
    assert message["timestamp"] == "2023-11-14T22:13:20.000Z"
    assert message["properties"]["started_at"] == "2025-11-24T11:56:40.000Z"  # unix seconds -> ISO


def test_call_with_no_agent_yet_is_anonymous_with_the_contacts_stable_id(engine):
    [ringing] = render(engine, sample("call.created"))
    assert "userId" not in ringing
    assert ringing["properties"]["user_id"] is None and ringing["properties"]["user_email"] is None
    contact_created = render(engine, sample("contact.created"))
    assert {m["anonymousId"] for m in contact_created} == {ringing["anonymousId"]}


def test_agent_on_the_call_is_the_user_and_no_anonymous_id_is_sent(engine):
    [ended] = render(engine, sample("call.ended"))
    assert ended["userId"] == "1234567"
    assert "anonymousId" not in ended  # the caller's identity is never merged into the agent's profile


def test_unknown_caller_gets_an_id_from_the_phone_number_or_the_call(engine):
    [anonymous] = render(engine, sample("call.ended--unknown_caller"))
    assert anonymous["properties"]["external_number"] is None  # "anonymous" has no digits
    envelope = sample("call.ended--unknown_caller")
    again = render(engine, {**envelope, "event": "call.hungup"})[0]
    assert anonymous["anonymousId"] == again["anonymousId"]  # the same call keeps its id across events
    outbound = render(engine, sample("call.ended--outbound"))[0]
    assert outbound["properties"]["external_number"] == "+49301234567"


def test_webhook_data_that_looks_like_a_template_comes_out_verbatim(engine):
    messages = render(engine, sample("contact.updated--unicode_quotes_template"))
    assert messages[0]["properties"]["information"] == "{{ 7*7 }} {% raw %}{% endraw %} ${HOME}"
    assert messages[1]["traits"]["lastName"] == "O'Brien-Łukasiewicz 日本"
    assert messages[1]["traits"]["firstName"] == 'Zoë "Zo"'
    comment = render(engine, sample("call.commented"))[0]["properties"]["comment_content"]
    assert comment.startswith("Customer asked for {{ 7*7 }} croissants")


def test_native_types_survive_and_missing_fields_are_null(engine):
    envelope = sample("call.ended--missed")
    [missed] = render(engine, envelope)
    props = missed["properties"]
    assert props["duration_seconds"] == 25 and isinstance(props["duration_seconds"], int)
    assert props["answered"] is False and props["answered_at"] is None and props["wait_seconds"] is None
    assert props["missed_call_reason"] == "agents_did_not_answer"
    assert props["team_names"] == ["Support FR"]
    bare = render(engine, {**envelope, "data": {"id": 5}})[0]["properties"]
    assert bare["call_id"] == 5 and bare["tags"] == [] and bare["number_digits"] is None


def test_strange_payload_types_do_not_crash_rendering(engine):
    envelope = sample("call.ended")
    envelope["data"].update(user="not an object", tags="VIP", teams=None, number=[1, 2], duration="12")
    [message] = render(engine, envelope)
    assert message["properties"]["tags"] == [] and message["properties"]["team_names"] == []


def test_render_into_a_reader_that_stops_early_ends_quietly_as_a_piped_command_does(tmp_path):
    """`engine render long.json | head` printed a BrokenPipeError traceback."""
    webhook = sample("transcription.created")
    utterance = webhook["data"]["content"]["utterances"][0]
    webhook["data"]["content"]["utterances"] = [dict(utterance, text=utterance["text"] * 20) for _ in range(3000)]
    (tmp_path / "long.json").write_text(json.dumps(webhook))
    reader, writer = os.pipe()
    child = subprocess.Popen(
        [str(ENGINE), "render", str(tmp_path / "long.json")], stdout=writer, stderr=subprocess.PIPE, cwd=ROOT
    )
    os.close(writer)
    assert os.read(reader, 10)  # what `head -c 10` reads, then it is gone
    os.close(reader)
    _, errors = child.communicate(timeout=60)
    assert child.returncode == 141, errors.decode()  # as a shell reports a command SIGPIPE ended
    assert errors == b""
