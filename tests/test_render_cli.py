"""`engine render` through the console script: what a webhook becomes, and a clear exit 2 for bad input."""

from __future__ import annotations

import json

from tests.conftest import FIXTURES


def sample(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_render_prints_the_messages_as_a_json_array(engine):
    run = engine("render", "tests/fixtures/user.created.json")
    assert run.code == 0, run.err
    messages = run.json()
    assert [m["type"] for m in messages] == ["track", "identify"]
    assert messages[0]["event"] == "user.created"
    assert messages[1]["traits"]["email"] == "camille.martin@example.com"
    assert {m["userId"] for m in messages} == {"1234567"}  # Aircall's numeric id, as a string


def test_render_reads_standard_input(engine):
    body = (FIXTURES / "call.ended.json").read_bytes()
    from_stdin = engine("render", "-", stdin=body)
    from_file = engine("render", "tests/fixtures/call.ended.json")
    assert from_stdin.code == 0
    assert from_stdin.json() == from_file.json()


def test_render_with_another_mappings_folder(engine, mappings_copy):
    (mappings_copy / "call.ended.yaml").write_text(
        "aircall_event: call.ended\nsegment:\n  type: track\n  event: Call Ended\n"
        "  userId: '{{ data.user.id }}'\n  properties:\n    seconds: '{{ data.duration }}'\n"
    )
    run = engine("render", "tests/fixtures/call.ended.json", "--mappings", str(mappings_copy))
    assert run.code == 0, run.err
    [message] = run.json()
    assert (message["event"], message["properties"]) == ("Call Ended", {"seconds": 200})


def test_bad_json_is_one_line_and_exit_2(engine):
    run = engine("render", "-", stdin=b'{"resource": "call", ')
    assert run.code == 2
    assert run.out == ""
    assert run.err.startswith("engine: -: body is not valid JSON:")
    assert run.err.count("\n") == 1 and "Traceback" not in run.err


def test_wrong_envelope_names_the_field(engine):
    body = sample("call.ended")
    body["timestamp"] = "yesterday"
    run = engine("render", "-", stdin=json.dumps(body).encode())
    assert run.code == 2
    assert run.err.strip() == "engine: -: not an Aircall webhook: timestamp: 'yesterday' is not of type 'integer'"


def test_missing_envelope_field_and_wrong_token_type_never_echo_the_token(engine):
    body = sample("call.ended")
    del body["data"]
    run = engine("render", "-", stdin=json.dumps(body).encode())
    assert (run.code, run.err.strip()) == (
        2,
        "engine: -: not an Aircall webhook: envelope: 'data' is a required property",
    )
    body = sample("call.ended")
    body["token"] = ["s3cret-token-value"]
    run = engine("render", "-", stdin=json.dumps(body).encode())
    assert run.code == 2 and "s3cret" not in run.err


def test_unknown_event_is_a_clear_error(engine):
    body = sample("call.ended")
    body["event"] = "call.teleported"
    run = engine("render", "-", stdin=json.dumps(body).encode())
    assert run.code == 2
    assert run.err.strip() == "engine: -: no mapping for event 'call.teleported' in mappings"


def test_missing_payload_file(engine):
    run = engine("render", "does-not-exist.json")
    assert (run.code, run.err.strip()) == (2, "engine: does-not-exist.json: cannot read: No such file or directory")


def test_nan_is_not_json(engine):
    body = json.dumps(sample("call.ended")).replace('"duration": 200', '"duration": NaN')
    run = engine("render", "-", stdin=body.encode())
    assert run.code == 2
    assert "NaN is not valid JSON" in run.err


def test_broken_mappings_print_findings_and_exit_1(engine, mappings_copy):
    (mappings_copy / "call.ended.yaml").write_text("aircall_event: call.ended\nsegment:\n  type: trak\n")
    run = engine("render", "tests/fixtures/call.ended.json", "--mappings", str(mappings_copy))
    assert run.code == 1
    assert "call.ended.yaml:3:9:" in run.err
