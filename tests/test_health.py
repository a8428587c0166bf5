"""Readiness (GET /readyz) on a real `engine serve`: degraded with reasons an operator can act on, the same answer
from every process, and /healthz a liveness answer whatever readiness says."""

from __future__ import annotations

import requests

from tests.conftest import run_engine
from tests.harness import call_webhook, expected_ids, sample, wait_for


def ready(server) -> tuple[int, dict]:
    answer = requests.get(f"{server.url}/readyz", timeout=5)
    return answer.status_code, answer.json()


def degraded_saying(server, text: str) -> dict:
    """Waits until /readyz answers 503 with a reason containing `text`; returns its body."""

    def check():
        status, body = ready(server)
        return status == 503 and any(text in reason for reason in body["reasons"]) and body

    return wait_for(check, what=f"/readyz degraded: {text}")


def test_a_fresh_server_is_ready_and_stays_ready_once_a_webhook_is_delivered(engine_server, segment):
    server = engine_server()
    assert ready(server) == (200, {"status": "ready"})
    assert server.health()["outbox"]["newest_webhook_age_seconds"] is None
    server.post(sample("call.ended"))
    segment.wait_for_ids(set(expected_ids(sample("call.ended"))))
    wait_for(lambda: server.health()["outbox"]["delivered"] == 1, what="delivered")
    assert ready(server) == (200, {"status": "ready"})


def test_segment_failing_for_a_while_is_degraded_and_ready_again_once_it_answers(engine_server, segment):
    segment.control(fail_for=600, status=503)
    server = engine_server(ENGINE_DEGRADED_DELIVERY_SECONDS="1")
    server.post(call_webhook(1))
    waiting = len(expected_ids(call_webhook(1)))
    body = degraded_saying(server, f"delivery to Segment keeps failing: {waiting} message(s) wait for Segment")
    assert "Segment answered 503" in " ".join(body["reasons"])
    assert server.health()["status"] == "ok"  # alive: liveness is not readiness
    assert requests.get(f"{server.url}/healthz", timeout=5).status_code == 200
    segment.control(fail_for=0)
    segment.wait_for_ids(set(expected_ids(call_webhook(1))), timeout=30)
    wait_for(lambda: ready(server) == (200, {"status": "ready"}), what="ready again")


def test_no_write_key_while_messages_wait_is_degraded(engine_server):
    server = engine_server(with_segment=False)
    assert ready(server)[0] == 200  # nothing waits yet: nothing is wrong
    server.post(sample("call.ended"))
    waiting = len(expected_ids(sample("call.ended")))
    degraded_saying(server, f"SEGMENT_WRITE_KEY is not set: {waiting} message(s) wait in the outbox and none is sent")


def test_a_new_dead_letter_is_degraded_on_every_worker_until_discarded(engine_server, segment):
    envelope = call_webhook(2)
    segment.control(reject_message_ids=expected_ids(envelope)[:1])
    server = engine_server(workers=2)
    server.post(envelope)
    degraded_saying(server, "dead letters grow: the newest came")
    # Two processes answer on the port: each reads the outbox (its counts at most a second old), so each says it.
    wait_for(lambda: all(ready(server)[0] == 503 for _ in range(12)), what="every process degraded")
    assert "1 wait for a replay or a discard" in ready(server)[1]["reasons"][0]
    discarded = run_engine("outbox", "discard", "--all", env={"ENGINE_DB": str(server.db)})
    assert discarded.code == 0, discarded.err
    wait_for(lambda: ready(server) == (200, {"status": "ready"}), what="ready once discarded")


def test_webhooks_waiting_for_aircalls_api_without_credentials_are_degraded(engine_server):
    server = engine_server(ENGINE_DEGRADED_LAG_SECONDS="1")
    announcement = sample("transcription.created")
    del announcement["data"]["content"]  # as Aircall sends it: the call, not the transcript, which is fetched
    server.post(announcement)
    degraded_saying(server, "wait: their mapping reads Aircall's REST API, and AIRCALL_API_ID and AIRCALL_API_TOKEN")
    body = degraded_saying(server, "processing is behind: 1 webhook(s) wait to be mapped")
    assert "(1 for Aircall's REST API)" in " ".join(body["reasons"])


def test_mappings_broken_on_disk_are_degraded_before_a_restart_would_fail(engine_server, mappings_copy):
    server = engine_server(ENGINE_MAPPINGS=str(mappings_copy))
    assert ready(server)[0] == 200
    mapping = mappings_copy / "call.ended.yaml"
    original = mapping.read_text()
    mapping.write_text(original + '  properties:\n    minutes: "{{ data.duration / }}"\n')
    body = degraded_saying(server, "the mappings on disk do not load; the ones loaded at start-up run on")
    assert "call.ended.yaml:" in body["reasons"][0] and "template syntax error" in body["reasons"][0]
    server.post(sample("call.ended"))  # the mappings loaded at start-up still map
    delivered = len(expected_ids(sample("call.ended")))
    wait_for(lambda: server.health()["outbox"]["delivered"] == delivered, what="delivered by the running mappings")
    mapping.write_text(original)
    wait_for(lambda: ready(server) == (200, {"status": "ready"}), what="ready once fixed")


def test_the_outbox_tells_readiness_the_newest_webhook_and_dead_letter_on_each_backend(outbox):
    from engine.outbox import NewMessage, stored_webhook
    from tests.test_outbox import webhook

    empty = outbox.stats()
    assert (empty.newest_webhook_age, empty.newest_dead_letter_age) == (None, None)
    outbox.enqueue([(stored_webhook(webhook(n)), [NewMessage(f"m-{n}", "call.ended", b"{}")]) for n in range(2)])
    stats = outbox.stats()
    assert 0 <= stats.newest_webhook_age < 60 and stats.newest_dead_letter_age is None
    first = outbox.claim(10, 30, "a")[0]
    outbox.dead([first.id], "Segment answered 400: bad")
    assert 0 <= outbox.stats().newest_dead_letter_age < 60
    outbox.mark_replayed([letter.id for letter in outbox.dead_letters()])  # a replayed one no longer counts
    assert outbox.stats().newest_dead_letter_age is None


def test_replicas_on_postgresql_give_the_same_answer_whichever_stored_the_webhook(engine_server, segment, postgres_url):
    envelope = call_webhook(3)
    segment.control(reject_message_ids=expected_ids(envelope)[:1])
    first, second = engine_server(ENGINE_DB=postgres_url), engine_server(ENGINE_DB=postgres_url)
    assert first.post(envelope).status_code == 200
    for replica in (second, first):  # the one that did not store it says so too: the outbox is shared
        degraded_saying(replica, "dead letters grow: the newest came")
    discarded = run_engine("outbox", "discard", "--all", env={"ENGINE_DB": postgres_url})
    assert discarded.code == 0, discarded.err
    for replica in (first, second):
        wait_for(lambda r=replica: ready(r) == (200, {"status": "ready"}), what="ready once discarded")


def test_a_webhook_aircall_disabled_is_degraded_and_aircall_no_longer_connected_on_the_console(engine_server, aircall):
    import re

    from tests.harness import TOKEN

    aircall.control(add_webhook={"url": "https://bridge.test/webhooks/aircall", "token": TOKEN})
    console_token = "health-console-token-7f3a9c2e5b"
    server = engine_server(**aircall.settings(), AIRCALL_WATCH_SECONDS="0.3", ENGINE_CONSOLE_TOKEN=console_token)
    wait_for(lambda: (server.health()["aircall_webhook"] or {}).get("state") == "active", what="a first look")
    assert ready(server)[0] == 200
    browser = requests.Session()
    form = browser.get(f"{server.url}/console/sign-in", timeout=10).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    browser.post(f"{server.url}/console/sign-in", data={"csrf": csrf, "token": console_token}, timeout=10)
    connected = re.compile(
        r'data-done="(yes|no)">\s*<span class="tick"[^>]*>[^<]*</span>\s*<span><strong>Aircall connected<'
    )
    assert connected.search(browser.get(f"{server.url}/console/", timeout=10).text).group(1) == "yes"

    aircall.control(disable_webhooks=True)  # what Aircall does after failed deliveries
    degraded_saying(server, "Aircall has disabled webhook wh-1 after failed deliveries")
    page = wait_for(lambda: (p := browser.get(f"{server.url}/console/", timeout=10).text) and "Degraded" in p and p)
    assert connected.search(page).group(1) == "no" and "Aircall has disabled webhook wh-1" in page
