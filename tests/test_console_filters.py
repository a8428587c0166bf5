"""The Webhooks page's filters: event, outcome, call id and time, with keyset paging, on each backend (the outbox's
find_webhooks), and through the console (the query string, a clear message for a bad value)."""

from __future__ import annotations

import html
import re
import time

from engine.aircall.envelope import Webhook
from engine.outbox import NewMessage, Processed, WebhookFilter, stored_webhook
from tests.harness import sample
from tests.test_console import CONSOLE_TOKEN, app_in, post, signed_in


def webhook(event: str, data: dict) -> Webhook:
    return Webhook(event.split(".")[0], event, 1_700_000_000, "secret-token", data)


def store(outbox, event: str, data: dict, outcome: str = "mapped") -> int:
    """One stored webhook with the outcome asked for; its id."""
    stored = stored_webhook(webhook(event, data))
    if outcome == "waiting":
        outbox.append([stored])
    elif outcome == "held":
        outbox.commit_processed([Processed(stored, held=True)])
    elif outcome == "dead letter":
        outbox.keep_webhook(stored, "call.ended.yaml: TypeError")
    else:
        outbox.enqueue([(stored, [NewMessage(f"m-{stored.key}", event, b"{}")])])
    return outbox.webhook_ids([stored.key])[stored.key]


def ids(found) -> list[int]:
    return [row.id for row in found.rows]


def test_filters_by_event_outcome_call_and_time_on_each_backend(outbox):
    ended = store(outbox, "call.ended", {"id": 2187654321, "duration": 10})
    other_call = store(outbox, "call.ended", {"id": 2100000001, "note": "mentions 2187654321 in text"})
    transcript = store(outbox, "transcription.created", {"call_id": 2187654321})
    waiting = store(outbox, "call.created", {"id": 5}, "waiting")
    held = store(outbox, "call.some_future_event.v3", {"id": 6}, "held")
    dead = store(outbox, "call.hungup", {"id": 7}, "dead letter")
    user = store(outbox, "user.created", {"id": 2187654321})  # a user with a call's number as id: not that call
    everything = ids(outbox.find_webhooks(WebhookFilter(), 100))
    assert everything == [user, dead, held, waiting, transcript, other_call, ended]

    def find(**chosen) -> list[int]:
        return ids(outbox.find_webhooks(WebhookFilter(**chosen), 100))

    assert find(event="call.ended") == [other_call, ended]
    assert find(event="call.*") == [dead, held, waiting, other_call, ended]
    assert find(event="call_*") == []  # '_' is a character here, not LIKE's any-one
    assert find(call_id=2187654321) == [transcript, ended]
    assert find(call_id=2187654321, event="call.ended") == [ended]
    assert find(outcome="waiting") == [waiting]
    assert find(outcome="held") == [held]
    assert find(outcome="dead letter") == [dead]
    assert find(outcome="mapped") == [user, transcript, other_call, ended]
    time.sleep(0.01)
    middle = time.time()
    time.sleep(0.01)
    later = store(outbox, "call.ended", {"id": 8})
    assert find(since=middle) == [later]
    assert find(until=middle) == everything
    assert find(since=middle, until=time.time() + 1, event="user.created") == []


def test_pages_are_keyset_and_a_sparse_search_says_where_it_continues(outbox):
    from engine.outbox.base import find_webhooks

    stored = [store(outbox, "user.created" if n % 50 == 0 else "call.ended", {"id": n}) for n in range(120)]
    calls = [i for n, i in enumerate(stored) if n % 50][::-1]  # newest first
    first = outbox.find_webhooks(WebhookFilter(event="call.ended"), 50)
    assert ids(first) == calls[:50] and first.next_before == calls[49]
    second = outbox.find_webhooks(WebhookFilter(event="call.ended"), 50, first.next_before)
    assert ids(second) == calls[50:100]  # the next page begins below the last row: no OFFSET, no row twice
    # A page reads a bounded window of ids: a rare event is found over several pages, each saying where the
    # next begins, and the last saying there is nothing older.
    seen, before, pages = [], None, 0
    while True:
        found = _find_small(outbox, find_webhooks, WebhookFilter(event="user.created"), before)
        seen += ids(found)
        pages += 1
        if found.next_before is None:
            break
        before = found.next_before
    assert seen == [i for n, i in enumerate(stored) if n % 50 == 0][::-1] and pages == 3


def _find_small(outbox, find_webhooks, chosen, before):
    """find_webhooks with a window of 40 ids, on the store's own connection and columns."""
    from engine.outbox import postgres, sqlite

    if isinstance(outbox, sqlite.SqliteOutbox):
        return outbox._snapshot(lambda conn: find_webhooks(conn, chosen, 50, before, sqlite._FIND_COLUMNS, scan=40))
    return outbox._write(lambda conn: find_webhooks(conn, chosen, 50, before, postgres._FIND_COLUMNS, scan=40))


def test_the_webhooks_page_filters_from_its_query_string_and_refuses_a_bad_value_plainly(tmp_path):
    with app_in(tmp_path, ENGINE_CONSOLE_TOKEN=CONSOLE_TOKEN) as client:
        post(client, sample("call.ended"))
        post(client, sample("user.created"))
        signed_in(client)
        page = client.get("/console/webhooks", params={"event": "user.created"}).text
        assert page.count('data-testid="webhook-row"') == 1 and "<code>user.created</code>" in page
        assert 'value="user.created"' in page  # the form keeps the filter: a filtered page can be linked
        page = client.get("/console/webhooks", params={"event": "user.*"}).text
        assert page.count('data-testid="webhook-row"') == 1 and "<code>user.created</code>" in page
        call = str(sample("call.ended")["data"]["id"])
        page = client.get("/console/webhooks", params={"call": call}).text
        assert page.count('data-testid="webhook-row"') == 1 and "<code>call.ended</code>" in page
        for params, message in [
            ({"event": "<script>"}, "event: '<script>' is not an event name"),
            ({"outcome": "lost"}, "outcome: 'lost' is not one of waiting, held, mapped, dead letter"),
            ({"call": "12x"}, "call: '12x' is not a call id (digits)"),
            ({"since": "yesterday"}, "since: 'yesterday' is not a UTC time like 2026-01-31 or 2026-01-31T14:05"),
            ({"since": "2026-02-01", "until": "2026-01-01"}, "until: 2026-01-01 is before since"),
            ({"before": "x"}, "before: 'x' is not a webhook id"),
        ]:
            answer = client.get("/console/webhooks", params=params)
            assert answer.status_code == 400, params
            assert message in html.unescape(answer.text), (
                params,
                re.findall(r'class="flash[^"]*">(.*?)<', answer.text),
            )
            assert "<script>" not in answer.text


def test_the_filtered_page_reads_postgresql_as_it_reads_sqlite(tmp_path, postgres_url):
    with app_in(tmp_path, ENGINE_CONSOLE_TOKEN=CONSOLE_TOKEN, ENGINE_DB=postgres_url) as client:
        post(client, sample("call.ended"))
        post(client, sample("user.created"))
        signed_in(client)
        call = str(sample("call.ended")["data"]["id"])
        page = client.get("/console/webhooks", params={"call": call, "event": "call.*", "since": "2020-01-01"}).text
        assert page.count('data-testid="webhook-row"') == 1 and "<code>call.ended</code>" in page
        assert client.get("/console/webhooks", params={"outcome": "held"}).text.count('data-testid="webhook-row"') == 0
