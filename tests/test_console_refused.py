"""Refused and ignored webhooks on the console's Webhooks page: a wrong token diagnosed on a page, nothing of an
unauthenticated request shown, kept or written, memory bounded."""

from __future__ import annotations

import html
import json
import re

from engine.outbox import SqliteOutbox
from tests.harness import sample
from tests.test_console import CONSOLE_TOKEN, app_in, signed_in

SECRET_EVENT = "call.secret_event_of_the_sender"
SECRET_DATA = "private-content-of-the-sender"
SECRET_HEADER = "header-value-of-the-sender"


def send(client, body: bytes | dict, **headers: str):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return client.post(
        "/webhooks/aircall",
        content=data,
        headers={"content-type": "application/json", "x-sender": SECRET_HEADER, **headers},
    )


def rows(page: str) -> list[str]:
    return re.findall(r'<tr data-testid="refused-row">(.*?)</tr>', page, re.S)


def test_refused_and_ignored_webhooks_are_listed_without_anything_an_unauthenticated_sender_sent(tmp_path):
    with app_in(tmp_path, ENGINE_CONSOLE_TOKEN=CONSOLE_TOKEN, AIRCALL_EVENTS="call.ended") as client:
        wrong = {**sample("call.ended"), "token": "not-the-token", "event": SECRET_EVENT}
        wrong["data"]["note"] = SECRET_DATA
        assert send(client, wrong).status_code == 401
        assert send(client, b'{"event": "' + SECRET_EVENT.encode() + b'", "x": ').status_code == 400
        assert send(client, sample("call.created")).json()["status"] == "ignored"  # authenticated, not enabled
        signed_in(client)
        page = client.get("/console/webhooks").text
        ignored, bad_json, unauthorized = rows(page)  # newest first
        assert (
            "401" in unauthorized and "wrong token" in unauthorized and "not shown: not authenticated" in unauthorized
        )
        assert "400" in bad_json and "not shown: not authenticated" in bad_json
        assert (
            "<code>call.created</code>" in ignored and "200" in ignored and "AIRCALL_EVENTS" in html.unescape(ignored)
        )
        assert "testclient" in unauthorized  # the client's address, as the server saw it
        assert "bad request 1, ignored 1, unauthorized 1" in page
        for secret in (SECRET_EVENT, SECRET_DATA, SECRET_HEADER, "not-the-token"):
            assert secret not in page
        status = client.get("/console/").text
        said = "1 webhook(s) refused with 401 by this server process in the last 15 minutes (wrong token)"
        assert said in html.unescape(status)
        outbox = SqliteOutbox(tmp_path / "outbox.sqlite3")
        assert outbox.recent_webhooks(10) == [] and outbox.stats().dead_letters == 0  # nothing was written
        outbox.close()


def test_a_flood_of_bad_tokens_keeps_the_last_hundred_and_counts_them_all(tmp_path):
    with app_in(tmp_path, ENGINE_CONSOLE_TOKEN=CONSOLE_TOKEN) as client:
        for n in range(150):
            assert send(client, {**sample("call.ended"), "token": f"guess-{n}"}).status_code == 401
        signed_in(client)
        page = client.get("/console/webhooks").text
        assert len(rows(page)) == 100 and "unauthorized 150" in page
        assert "guess-" not in page
