"""The console's status page: its headline is readiness (GET /readyz's own evaluation), it waits for the first
webhook rather than saying "Flowing" on an empty server, and its set-up checklist ticks what is done."""

from __future__ import annotations

import html
import re

from engine.outbox import SqliteOutbox
from tests.harness import TOKEN, sample, wait_for
from tests.test_console import CONSOLE_TOKEN, app_in, post, signed_in


def headline(page: str) -> str:
    return re.search(r'data-testid="headline" data-state="(\w+)"', page).group(1)


def steps(page: str) -> dict[str, bool]:
    found = re.findall(
        r'data-done="(yes|no)">\s*<span class="tick"[^>]*>[^<]*</span>\s*<span><strong>([^<]+)</strong>', page
    )
    return {html.unescape(title): done == "yes" for done, title in found}


def test_an_empty_server_waits_for_its_first_webhook_and_says_how_to_send_one(tmp_path):
    with app_in(tmp_path, ENGINE_CONSOLE_TOKEN=CONSOLE_TOKEN) as client:
        signed_in(client)
        page = client.get("/console/").text
        assert headline(page) == "waiting" and "Flowing" not in page
        assert "Waiting for the first webhook" in page
        command = html.unescape(re.search(r'<pre class="command" id="sample-command">(.*?)</pre>', page).group(1))
        assert command == (
            "curl -s -X POST https://bridge.test/webhooks/aircall -H 'Content-Type: application/json' "
            "--data @tests/fixtures/call.ended.json"
        )
        assert steps(page) == {
            "A webhook received": False,
            "Aircall's API credentials set": True,
            "Aircall connected": False,  # only the samples' token
            "Segment's write key set": True,
            "A message delivered to Segment": False,
        }
        post(client, sample("call.ended"))
        outbox = SqliteOutbox(tmp_path / "outbox.sqlite3")
        wait_for(lambda: outbox.stats().unprocessed == 0, what="processing")
        outbox.close()
        page = wait_for(lambda: (p := client.get("/console/api/status").text) and headline(p) != "waiting" and p)
        # Segment is unreachable here (delivery pauses): what matters is that the page waits no more.
        assert "Waiting for the first webhook" not in page and steps(page)["A webhook received"] is True


def test_the_headline_is_degraded_with_the_reasons_readyz_gives(tmp_path):
    with app_in(tmp_path, ENGINE_CONSOLE_TOKEN=CONSOLE_TOKEN) as client:
        hungup = sample("call.hungup")
        del hungup["data"]["duration"]  # its mapping fails on it: a dead letter
        post(client, hungup)
        ready = wait_for(lambda: (r := client.get("/readyz")).status_code == 503 and r.json(), what="degraded")
        signed_in(client)
        page = client.get("/console/").text
        assert headline(page) == "degraded"
        text = html.unescape(re.sub(r"<[^>]+>", "", page))  # as read: commands are <code>, not backticks
        for reason in ready["reasons"]:
            assert reason[1:].replace("`", "") in text
        assert "<code>engine outbox status --dead</code>" in page
        assert "Dead letters grow: the newest came" in text
        assert "dead letter waits for a replay" not in text  # said once, not again as a note


def test_a_token_of_the_accounts_own_ticks_aircall_connected_and_no_write_key_is_left_to_do(tmp_path):
    with app_in(
        tmp_path, ENGINE_CONSOLE_TOKEN=CONSOLE_TOKEN, AIRCALL_WEBHOOK_TOKEN=f"{TOKEN},token-of-the-account-0001",
        SEGMENT_WRITE_KEY="", AIRCALL_API_ID="",
    ) as client:  # fmt: skip
        signed_in(client)
        page = client.get("/console/").text
        done = steps(page)
        assert done["Aircall connected"] is True
        assert done["Segment's write key set"] is False and done["Aircall's API credentials set"] is False
        assert "Setting up: 1 of 5 done" in page
        assert "token-of-the-account-0001" not in page and TOKEN not in page


def test_the_first_run_console_token_is_refused_wherever_the_server_listens_beyond_this_machine(tmp_path):
    """README's first command sets a token anyone can read: fit for 127.0.0.1, refused on any other address."""
    from tests.conftest import run_engine
    from tests.harness import free_port

    env = {"ENGINE_CONSOLE_TOKEN": "first-run-console-token", "AIRCALL_WEBHOOK_TOKEN": "t",
           "ENGINE_DB": str(tmp_path / "outbox.sqlite3")}  # fmt: skip
    for host in ("0.0.0.0", "::", "192.0.2.1"):
        run = run_engine("serve", "--host", host, "--port", str(free_port()), env=env, timeout=30)
        assert run.code == 2 and "README's first-run token is public" in run.err, (host, run.err)
        assert "first-run-console-token" not in run.err


def test_the_first_run_token_signs_in_from_this_machine_only_whatever_runs_the_app(tmp_path, engine_server):
    """`uvicorn server:app --host 0.0.0.0` skips `engine serve`'s check: the console itself refuses the public
    token to a request that did not come from loopback to loopback (here Starlette's test client, 'testclient')."""
    import re

    import requests

    from tests.test_console import app_in

    def sign_in(session, url: str):
        form = session.get(f"{url}/console/sign-in").text
        csrf = re.search(r'name="csrf" value="([^"]+)"', form).group(1)
        return session.post(f"{url}/console/sign-in", data={"csrf": csrf, "token": "first-run-console-token"})

    with app_in(tmp_path, ENGINE_CONSOLE_TOKEN="first-run-console-token") as client:
        refused = sign_in(client, "")
        assert refused.status_code == 401 and "public first-run token" in refused.text
        assert client.get("/console/", follow_redirects=False).status_code == 303  # not signed in
    server = engine_server(ENGINE_CONSOLE_TOKEN="first-run-console-token")  # 127.0.0.1, as README runs it
    local = requests.Session()
    assert sign_in(local, server.url).status_code == 200
    assert local.get(f"{server.url}/console/", allow_redirects=False).status_code == 200
