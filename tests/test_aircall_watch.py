"""The server watching Aircall's webhook (engine.aircall.watch): a real `engine serve` and the fake Aircall API.

Aircall disables a webhook whose deliveries keep failing, and the server would only see silence: it must say
so in /healthz, /metrics and the console, and `engine aircall connect` must turn the webhook back on.
"""

from __future__ import annotations

import re

import requests

from tests.conftest import run_engine
from tests.harness import TOKEN, metric, wait_for

URL = "https://bridge.example/webhooks/aircall"
CONSOLE_TOKEN = "watch-console-7f3a9c2e5b8d1046"


def watched(server) -> dict | None:
    return server.health()["aircall_webhook"]


def state_metric(server, state: str) -> float:
    return metric(server.metrics(), "aircall_segment_aircall_webhook_state", state=state)


def console_status(server) -> str:
    browser = requests.Session()
    form = browser.get(f"{server.url}/console/sign-in", timeout=10).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
    browser.post(f"{server.url}/console/sign-in", data={"csrf": csrf, "token": CONSOLE_TOKEN}, timeout=10)
    return browser.get(f"{server.url}/console/", timeout=10).text


def test_a_webhook_aircall_disables_is_shown_everywhere_and_connect_turns_it_back_on(engine_server, aircall):
    aircall.control(add_webhook={"url": URL, "token": TOKEN})  # the server's token: its webhook
    settings = aircall.settings() | {"AIRCALL_WATCH_SECONDS": "0.3", "ENGINE_CONSOLE_TOKEN": CONSOLE_TOKEN}
    server = engine_server(**settings)
    assert wait_for(lambda: watched(server), what="a first look")["state"] == "active"
    assert state_metric(server, "active") == 1 and state_metric(server, "disabled") == 0
    assert "warning" not in server.health()

    aircall.control(disable_webhooks=True)  # what Aircall does after failed deliveries
    found = wait_for(lambda: (w := watched(server)) and w["state"] == "disabled" and w, what="the disabled webhook")
    assert found["webhooks"] == ["wh-1"]
    assert server.health()["warning"].startswith("Aircall has disabled webhook wh-1 after failed deliveries")
    assert state_metric(server, "disabled") == 1 and state_metric(server, "active") == 0
    assert "Aircall has disabled webhook wh-1" in console_status(server)

    again = run_engine("aircall", "connect", "--url", URL, env=aircall.settings())
    assert again.code == 0 and "re-enabled webhook wh-1" in again.err, again.err
    wait_for(lambda: watched(server)["state"] == "active", what="the webhook on again")
    assert "Aircall has disabled" not in console_status(server)


def test_no_webhook_carrying_the_token_is_said_and_without_credentials_nothing_is_asked(engine_server, aircall):
    aircall.control(add_webhook={"url": URL, "token": "someone-elses-token-0000"})
    server = engine_server(**aircall.settings(), AIRCALL_WATCH_SECONDS="0.3")
    found = wait_for(lambda: watched(server), what="a first look")
    assert found["state"] == "missing" and "No webhook of this Aircall account carries" in found["detail"]
    assert TOKEN not in str(server.health()) and "someone-elses" not in str(server.health())
    server.stop()
    before = aircall.stats()["requests"]
    quiet = engine_server(AIRCALL_WATCH_SECONDS="0.3")  # no API credentials: no watch, no request
    assert quiet.health()["aircall_webhook"] is None
    assert state_metric(quiet, "active") == 0 and "aircall_webhook_state" not in quiet.metrics()
    assert aircall.stats()["requests"] == before


def test_an_api_that_fails_leaves_the_state_unknown_not_a_problem(engine_server, aircall):
    aircall.control(add_webhook={"url": URL, "token": TOKEN}, fail_after=0)  # every request answers 500
    server = engine_server(**aircall.settings(), AIRCALL_WATCH_SECONDS="0.3")
    found = wait_for(lambda: watched(server), timeout=30, what="a first look")
    assert found["state"] == "unknown" and "did not say whether the webhook is on" in found["detail"]
    assert "warning" not in server.health()
