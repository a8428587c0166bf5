"""A webhook that only refers to its content (transcription.created with the call's id and no transcript): the
mapping's `fetch` reads it from Aircall's REST API. Through a real `engine serve`, the strict fake Aircall API
and the strict fake Segment: delivered whole when the API answers; waiting, never a dead letter, while there
are no credentials or the API fails; a dead letter, with the reason, for what the API will never give."""

from __future__ import annotations

import json
import shutil
import socket
import time

from tests.conftest import MAPPINGS, run_engine
from tests.harness import expected_ids, metric, sample, wait_for

TRANSCRIPT = sample("transcription.created--long_call")["data"]["content"]


def announcement(call_id: object = 2187654321) -> dict:
    """transcription.created as Aircall's reference describes it: the call, not the transcript."""
    envelope = sample("transcription.created")
    del envelope["data"]["content"]
    envelope["data"]["call_id"] = call_id
    return envelope


def utterances(segment, call_id: int) -> list[dict]:
    received = segment.received()["messages"]
    return [m["properties"] for m in received if m.get("event") == "transcription.utterance"
            and m["properties"]["call_id"] == call_id]  # fmt: skip


def whole_texts(parts: list[dict]) -> list[str]:
    by_position: dict[int, list[tuple[int, str]]] = {}
    for part in parts:
        by_position.setdefault(part["utterance_index"], []).append((part["text_part"], part["text"]))
    return ["".join(text for _, text in sorted(by_position[i])) for i in sorted(by_position)]


def test_a_transcript_the_webhook_only_refers_to_is_read_from_the_api_and_delivered_whole(
    engine_server, segment, aircall
):
    server = engine_server(**aircall.settings())
    assert server.post(announcement()).json() == {"status": "accepted"}
    wait_for(lambda: len(utterances(segment, 2187654321)) >= 200, timeout=30, what="the utterances at Segment")
    parts = utterances(segment, 2187654321)
    assert whole_texts(parts) == [u["text"] for u in TRANSCRIPT["utterances"]]
    [outline] = [m for m in segment.received()["messages"] if m.get("event") == "transcription.created"]
    assert (outline["properties"]["utterance_count"], outline["properties"]["language"]) == (200, "fr-FR")
    assert aircall.stats()["served"]["transcriptions"] == 1  # one request, for one webhook


def test_without_api_credentials_it_waits_and_is_delivered_once_they_are_set(engine_server, segment, aircall):
    server = engine_server()
    assert server.post(announcement()).json() == {"status": "accepted"}
    health = wait_for(lambda: (h := server.health())["outbox"]["waiting_for_aircall_api"] == 1 and h, what="waiting")
    assert health["outbox"]["dead_letters"] == 0 and health["aircall_api_configured"] is False
    assert "AIRCALL_API_ID and AIRCALL_API_TOKEN are not set" in health["warning"]
    assert segment.received()["messages"] == []
    assert metric(server.metrics(), "aircall_segment_outbox_waiting_for_api_webhooks") == 1
    server.stop()
    restarted = engine_server(**aircall.settings())  # the operator adds the credentials and restarts
    wait_for(lambda: len(utterances(segment, 2187654321)) >= 200, timeout=30, what="the utterances at Segment")
    wait_for(lambda: restarted.health()["outbox"]["waiting_for_aircall_api"] == 0, what="nothing waiting")


def test_while_the_api_fails_it_waits_then_is_delivered_when_the_api_is_back(engine_server, segment, aircall):
    aircall.control(fail_after=0)  # every request answers 500
    server = engine_server(**aircall.settings())  # ENGINE_BACKOFF_CAP_SECONDS=1: tried again within a second
    assert server.post(announcement()).json() == {"status": "accepted"}
    wait_for(lambda: aircall.stats()["requests"] >= 2, what="requests to the failing API")
    outbox = server.health()["outbox"]
    assert (outbox["dead_letters"], outbox["pending"]) == (0, 0)
    # The processing process writes its log on a thread of its own: the line follows the requests, a moment later.
    line = wait_for(
        lambda: next((line for line in server.process.log.splitlines() if "wait for Aircall's REST API" in line), None),
        what="the waiting webhook's log line",
    )
    assert 'outcome=waiting webhooks=1 reason="GET /calls/2187654321/transcription: Aircall API answered 500' in line
    aircall.control(fail_after=None)
    wait_for(lambda: len(utterances(segment, 2187654321)) >= 200, timeout=30, what="the utterances at Segment")
    assert server.health()["outbox"]["dead_letters"] == 0


def test_what_the_api_will_never_give_is_a_dead_letter_that_says_why(engine_server, aircall):
    server = engine_server(**aircall.settings())
    server.post(announcement(call_id="not-a-call"))
    server.post(announcement(call_id="../webhooks"))
    health = wait_for(lambda: (h := server.health())["outbox"]["dead_letters"] == 2 and h, what="two dead letters")
    assert health["outbox"]["waiting_for_aircall_api"] == 0
    status = run_engine("outbox", "status", "--dead", "--json", env={"ENGINE_DB": str(server.db)}).json()
    reasons = sorted(letter["reason"] for letter in status["dead"])
    assert reasons[0].startswith("GET /calls/not-a-call/transcription: Aircall API answered 404")
    assert reasons[1] == (
        "transcription.created.yaml: fetch.transcription: the path rendered '/calls/../webhooks/transcription', "
        "not a plain API path (letters, digits, '_', '-' and '/')"
    )
    assert aircall.stats()["served"].get("transcriptions", 0) == 0  # the odd path was never requested


def test_engine_render_does_not_read_the_api(engine, tmp_path):
    path = tmp_path / "announcement.json"
    path.write_text(json.dumps(announcement()))
    run = engine("render", str(path))
    assert run.code == 0, run.err
    [outline] = run.json()  # nothing fetched: the outline of an unknown transcript, no utterance
    assert outline["properties"]["utterance_count"] == 0


def test_an_api_that_hangs_holds_up_nothing_that_does_not_fetch(engine_server, segment, tmp_path):
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(64)  # connections are taken, and never answered
    url = f"http://127.0.0.1:{hanging.getsockname()[1]}/v1"
    try:
        server = engine_server(AIRCALL_API_URL=url, AIRCALL_API_ID="api-id", AIRCALL_API_TOKEN="api-token")
        for n in range(6):
            assert server.post(announcement(call_id=2187654321 + n)).json() == {"status": "accepted"}
        started = time.monotonic()
        call = sample("call.ended")
        assert server.post(call).json() == {"status": "accepted"}
        segment.wait_for_ids(set(expected_ids(call)), timeout=20)
        # One request's timeout (5 s) at most, not one per waiting transcript (6 x 15 s before).
        assert time.monotonic() - started < 12
        waiting = wait_for(lambda: server.health()["outbox"]["waiting_for_aircall_api"] == 6, what="six waiting")
        assert waiting
    finally:
        hanging.close()


def test_an_answer_larger_than_any_transcript_is_a_dead_letter_not_a_memory_blowup(engine_server, aircall):
    aircall.control(transcript_padding=9 * 1024 * 1024)
    server = engine_server(**aircall.settings())
    server.post(announcement())
    wait_for(lambda: server.health()["outbox"]["dead_letters"] == 1, timeout=30, what="a dead letter")
    status = run_engine("outbox", "status", "--dead", "--json", env={"ENGINE_DB": str(server.db)}).json()
    assert "Aircall API's answer is over 8,388,608 bytes" in status["dead"][0]["reason"]


def test_a_fetch_path_missing_a_field_is_refused_without_a_request(engine_server, aircall, tmp_path):
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    text = (mappings / "call.ended.yaml").read_text()
    (mappings / "call.ended.yaml").write_text(
        text + 'fetch:\n  call:\n    path: "/calls/{{ data.id }}/transcription"\n'
    )
    server = engine_server(ENGINE_MAPPINGS=str(mappings), **aircall.settings())
    call = sample("call.ended")
    del call["data"]["id"]
    server.post(call)
    wait_for(lambda: server.health()["outbox"]["dead_letters"] == 1, what="a dead letter")
    status = run_engine("outbox", "status", "--dead", "--json", env={"ENGINE_DB": str(server.db)}).json()
    assert status["dead"][0]["reason"] == (
        "call.ended.yaml: fetch.call: the path rendered '/calls/None/transcription': a field it reads is missing"
    )
    assert aircall.stats()["requests"] == 0
