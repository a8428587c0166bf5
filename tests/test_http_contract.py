"""Every answer of POST /webhooks/aircall that README promises, one case each, in-process (Starlette's
TestClient runs the app and its lifespan: real outbox file, real mappings, no Segment)."""

from __future__ import annotations

import json
import shutil
import time

import pytest
from starlette.testclient import TestClient

from engine.server.app import create_app
from tests.conftest import MAPPINGS
from tests.harness import TOKEN, sample

MAX_BODY = 65536


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("contract")
    mappings = folder / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    strict = "aircall_event: call.hungup\nextends: _call.yaml\nsegment:\n  event: call.hungup\n"
    (mappings / "call.hungup.yaml").write_text(strict + "  properties:\n    minutes: '{{ data.duration / 60 }}'\n")
    settings = {
        "AIRCALL_WEBHOOK_TOKEN": TOKEN,
        "AIRCALL_NUMBERS": "+33 1 76 36 06 95",
        "ENGINE_MAPPINGS": str(mappings),
        "ENGINE_DB": str(folder / "outbox.sqlite3"),
        "ENGINE_MAX_BODY_BYTES": str(MAX_BODY),
    }
    (folder / "settings.env").write_text("".join(f"{k}={v}\n" for k, v in settings.items()))
    with TestClient(create_app(str(folder / "settings.env"))) as test_client:
        yield test_client


def envelope(name: str = "call.ended", **changes) -> bytes:
    body = sample(name)
    for key, value in changes.items():
        if value is None:
            del body[key]
        else:
            body[key] = value
    return json.dumps(body).encode()


def on_number(digits: str, number_id: int = 2) -> bytes:
    body = sample("call.ended")
    body["data"]["id"] += number_id
    body["data"]["number"] = {"id": number_id, "digits": digits}
    return json.dumps(body).encode()


JSON = {"Content-Type": "application/json"}


def error(reason: str) -> dict[str, str]:
    return {"status": "error", "reason": reason}


CASES = {
    "accepted": (envelope(), JSON, 200, {"status": "accepted"}),
    "redelivery": (envelope(), JSON, 200, {"status": "accepted", "duplicate": True}),
    "charset in the content type": (envelope("user.created"), {"Content-Type": "application/json; charset=utf-8"},
                                    200, {"status": "accepted"}),
    # AIRCALL_EVENTS=all (the default): a V2 user event, and one Aircall has not announced yet, are stored.
    "V2 user event": (envelope("user.created.v2"), JSON, 200, {"status": "accepted"}),
    "event no mapping maps": (envelope(event="call.some_future_event.v3"), JSON, 200, {"status": "accepted"}),
    "number not active": (on_number("+49 30 9999999"), JSON, 200,
                          {"status": "ignored", "reason": "number not active (AIRCALL_NUMBERS)"}),
    # AIRCALL_NUMBERS and the e164 filter read digits alike: ASCII digits, whatever else is written around them.
    "active number written oddly": (on_number("+33 1 76 36 06 95\u00b2"), JSON, 200, {"status": "accepted"}),
    # Mapping comes after the answer: the webhook is stored, and becomes a dead letter when it is mapped.
    "mapping fails on this payload": (envelope("call.hungup", data={**sample("call.hungup")["data"], "duration": "x"}),
                                      JSON, 200, {"status": "accepted"}),
    "wrong token": (envelope(token="wrong"), JSON, 401, error("wrong token")),
    "missing token": (envelope(token=None), JSON, 401, error("missing token")),
    "token not a string": (envelope(token=[TOKEN]), JSON, 401, error("missing token")),
    "not JSON": (b'{"event": ', JSON, 400,
                 error("body is not valid JSON: Expecting value: line 1 column 11 (char 10)")),
    "NaN": (envelope().replace(b'"duration": 200', b'"duration": NaN'), JSON, 400,
            error("body is not valid JSON: NaN is not valid JSON")),
    "nested past 64 levels": (b"[" * 65 + b"]" * 65, JSON, 400,
                              error("body is not valid JSON: nested deeper than 64 levels")),
    "not an envelope": (envelope(data=None), JSON, 400,
                        error("not an Aircall webhook: envelope: 'data' is a required property")),
    "too large": (envelope(padding="x" * MAX_BODY), JSON, 413, error("body over 65536 bytes")),
    "not application/json": (envelope(), {"Content-Type": "text/plain"}, 415,
                             error("content type must be application/json")),
    "no content type": (envelope(), {}, 415, error("content type must be application/json")),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_the_webhook_answers_as_the_contract_says(client, case):
    body, headers, status, payload = CASES[case]
    if case == "redelivery":  # its first delivery, whether or not the "accepted" case ran before
        client.post("/webhooks/aircall", content=body, headers=headers)
    answer = client.post("/webhooks/aircall", content=body, headers=headers)
    assert (answer.status_code, answer.json()) == (status, payload)


def test_a_body_without_content_length_is_counted_as_it_is_read(client):
    chunks = iter([b'{"padding": "', b"x" * 40_000, b"x" * 40_000, b'"}'])
    answer = client.post("/webhooks/aircall", content=chunks, headers=JSON)
    assert (answer.status_code, answer.json()["reason"]) == (413, "body over 65536 bytes")


def test_of_two_content_types_the_first_is_the_one_read(client):
    body = envelope()
    both = [("Content-Type", "text/plain"), ("Content-Type", "application/json")]
    assert client.post("/webhooks/aircall", content=body, headers=both).status_code == 415
    assert client.post("/webhooks/aircall", content=body, headers=both[::-1]).status_code == 200


def test_only_post(client):
    assert client.get("/webhooks/aircall").status_code == 405


def test_a_trailing_slash_reaches_the_webhook_and_no_path_redirects_to_the_host_a_request_named(client):
    """Starlette answered a path with a trailing slash by a redirect to the request's own Host header: a header
    of an unauthenticated request echoed back."""
    hostile = {"Host": "evil.example", "Content-Type": "application/json"}
    wrong_token = envelope(token="not-the-token")
    answers = [
        client.post("/webhooks/aircall/", content=wrong_token, headers=hostile, follow_redirects=False),
        client.get("/healthz/", headers=hostile, follow_redirects=False),
        client.get("/console/webhooks/", headers=hostile, follow_redirects=False),
    ]
    assert [a.status_code for a in answers] == [401, 404, 404]
    for answer in answers:
        assert "evil" not in answer.text and "evil" not in str(answer.headers)


def test_what_was_accepted_is_in_the_outbox(client):
    """After the cases above: the accepted webhooks' messages wait in the outbox (no Segment here), the
    refused and ignored ones left nothing, the one the mapping failed on is a dead letter, the one no mapping
    maps is held."""
    for case in CASES:  # run alone, this test sends the cases itself; a redelivery adds nothing
        body, headers, *_ = CASES[case]
        client.post("/webhooks/aircall", content=body, headers=headers)
    # Mapped by the processing process; /healthz may reuse its counts for a second.
    deadline = time.monotonic() + 30
    while client.get("/healthz").json()["outbox"]["pending"] < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.1)
    outbox = client.get("/healthz").json()["outbox"]
    # The second post of the webhook its mapping fails on is the same bytes: stored once, one dead letter.
    assert (outbox["unprocessed"], outbox["pending"], outbox["dead_letters"]) == (0, 6, 1)
    assert (outbox["unmapped"], outbox["unmapped_by_event"]) == (1, {"call.some_future_event.v3": 1})
