"""Tokens and keys stay secret, a wrong token stores nothing, and mappings cannot escape the sandbox."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil

import pytest

from engine.aircall import webhook as webhook_module
from engine.aircall.webhook import token_matches
from tests.conftest import MAPPINGS, run_engine
from tests.harness import TOKEN, WRITE_KEY, count, expected_ids, sample


def test_wrong_or_missing_token_gets_401_and_stores_nothing(engine_server, segment):
    server = engine_server()
    wrong = ("", "x", TOKEN[:-1], TOKEN + " ", TOKEN + "x", TOKEN.upper(), f"new-token,{TOKEN}")
    tries = [{**sample("call.ended"), "token": t} for t in wrong]
    tries.append({k: v for k, v in sample("call.ended").items() if k != "token"})
    tries.append({**sample("call.ended"), "token": None})
    for envelope in tries:
        assert server.post(envelope).status_code == 401
    assert server.post(sample("call.hungup")).status_code == 200  # the right token, to see that it would send
    segment.wait_for_ids(set(expected_ids(sample("call.hungup"))))
    unauthorized = f'aircall_segment_webhooks_total{{event="call.ended",outcome="unauthorized"}} {len(tries)}.0'
    assert unauthorized in server.metrics()
    server.stop()
    import sqlite3

    conn = sqlite3.connect(server.db)
    events = [row[0] for row in conn.execute("SELECT event FROM webhooks UNION ALL SELECT event FROM dead_letters")]
    assert events == ["call.hungup"]
    assert {m.get("event") for m in segment.received()["messages"]} == {"call.hungup"}


@pytest.mark.parametrize("position", [0, 1, 2])
def test_token_check_compares_every_configured_token_whichever_matches(monkeypatch, position):
    tokens = ["first-token", "second-token-longer", "3"]
    digests = tuple(hashlib.sha256(t.encode()).digest() for t in tokens)
    compared: list[tuple[int, int]] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(webhook_module.hmac, "compare_digest", counting)
    assert token_matches(tokens[position], digests)
    assert not token_matches("nope", digests)
    # Same work whatever the token, its length, or which configured token it matches: no timing to learn from.
    assert compared == [(32, 32)] * 6


def test_secrets_never_reach_logs_health_metrics_or_answers(engine_server, segment):
    server = engine_server(ENGINE_LOG_FORMAT="json", ENGINE_LOG_LEVEL="debug")
    server.post(sample("call.ended"))
    answers = [server.post({**sample("call.ended"), "token": "a-wrong-token-value"}).text]
    answers.append(server.post({**sample("call.ended"), "token": ["a-wrong-token-value"]}).text)
    answers.append(server.post(json.dumps(sample("call.ended"))[:-5].encode()).text)
    segment.wait_for_ids(set(expected_ids(sample("call.ended"))))
    exposed = "\n".join([*answers, json.dumps(server.health()), server.metrics()])
    server.stop()
    exposed += server.process.log + json.dumps(segment.received()["messages"])
    status = run_engine("outbox", "status", "--json", env={"ENGINE_DB": str(server.db)})
    exposed += status.out + status.err
    basic = "dGVzdC13cml0ZS1rZXk6"  # base64 of "test-write-key:", the Authorization header's value
    for secret in (TOKEN, "a-wrong-token-value", WRITE_KEY, basic):
        assert secret not in exposed
    with open(server.db, "rb") as db:
        assert TOKEN.encode() not in db.read()  # nor the outbox file
    count("security: secrets checked in logs, answers, /healthz, /metrics, outbox", 4)


@pytest.mark.parametrize("template", ["{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ data.__init__ }}"])
def test_sandbox_escape_in_a_mapping_is_refused_at_start_up(tmp_path, template):
    mappings = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, mappings)
    head = "aircall_event: call.ended\nextends: _call.yaml\nsegment:\n  event: call.ended\n  properties:\n"
    (mappings / "call.ended.yaml").write_text(f'{head}    x: "{template}"\n')
    run = run_engine("serve", "--port", "1", env={"ENGINE_MAPPINGS": str(mappings), "ENGINE_DB": str(tmp_path / "o")})
    assert run.code == 2
    assert "call.ended.yaml:6:8: access to '__" in run.err
    assert not (tmp_path / "o").exists()  # refused before anything was opened
