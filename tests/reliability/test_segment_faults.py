"""Segment misbehaving in every way at once, over a steady stream of webhooks: nothing is lost, the one
message Segment refuses is dead-lettered with its reason, and Aircall is answered at once throughout."""

from __future__ import annotations

import collections
import time

from tests.conftest import run_engine
from tests.harness import call_webhook, count, expected_ids, wait_for


def test_outage_429_storm_timeouts_resets_and_a_poison_message(engine_server, segment):
    started = time.monotonic()
    server = engine_server(SEGMENT_TIMEOUT_SECONDS="1", ENGINE_BACKOFF_CAP_SECONDS="2")
    webhooks = [call_webhook(n) for n in range(400)]
    poison = expected_ids(webhooks[123])[0]
    segment.control(reject_message_ids=[poison])
    # Each fault, and what the fake logs when delivery has met it (None: no mark of its own).
    phases = [
        ({"fail_for": 6.0, "status": 503}, "503"),  # a long outage
        ({"fail_next": 5, "status": 429, "retry_after": "1"}, "429"),  # a 429 storm, each with Retry-After
        ({"fail_next": 2, "hang_for": 2.0}, None),  # answers slower than the client's timeout
        ({"reset_connection": 3}, "reset"),  # connections cut mid-answer
        ({"fail_next": 3, "status": 500}, "500"),
    ]
    slowest = 0.0
    for number, (phase, mark) in enumerate(phases):
        segment.control(**({"hang_for": 0.0} | phase))
        for envelope in webhooks[number * 80 : (number + 1) * 80]:
            sent = time.monotonic()
            assert server.post(envelope).status_code == 200
            slowest = max(slowest, time.monotonic() - sent)
            time.sleep(0.01)
        if mark is not None:  # delivery has met this fault before the next one replaces it
            wait_for(lambda m=mark: any(str(r["status"]) == m for r in segment.received()["requests"]), 30,
                     what=f"a {mark} at the fake")  # fmt: skip
    good = {i for w in webhooks for i in expected_ids(w)} - {poison}
    received = segment.wait_for_ids(good, timeout=90)
    wait_for(lambda: server.health()["outbox"]["pending"] == 0, 30, what="empty outbox")
    status = run_engine("outbox", "status", "--json", "--dead", env={"ENGINE_DB": str(server.db)}).json()
    assert [d["message_id"] for d in status["dead"]] == [poison]
    assert status["dead"][0]["reason"].startswith("Segment answered 400:")
    statuses = collections.Counter(str(r["status"]) for r in received["requests"])
    assert {"503", "429", "reset", "500", "200"} <= statuses.keys()
    count("segment faults: webhooks acknowledged", len(webhooks))
    count("segment faults: failed requests survived", sum(v for k, v in statuses.items() if k != "200"))
    count("segment faults: slowest webhook answer ms", round(slowest * 1000, 1))
    count("segment faults: seconds", round(time.monotonic() - started, 1))
