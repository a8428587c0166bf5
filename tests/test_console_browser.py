"""The web console in a real browser: the distribution's Chromium, driven by Playwright, against a real `engine serve`
(with 50 minutes of history in its outbox) delivering to the fake Segment. One browser and one server for the
module; a fresh browser context (no cookies) for each test.

Each test saves screenshots of the pages it visits in its temporary folder. With CONSOLE_SCREENSHOTS=docs the
status page, a new server's status page and the playground are also written to docs/console-status.png,
docs/console-first-run.png and docs/console-playground.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import MAPPINGS, ROOT
from tests.harness import TOKEN, Engine, call_webhook, expected_ids, sample, wait_for

try:
    from playwright.sync_api import Page, expect, sync_playwright
except ImportError:  # pragma: no cover - the test extra installs it
    pytest.skip("playwright is not installed: pip install -e '.[test]'", allow_module_level=True)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None:
    pytest.skip("no Chromium to drive: apt-get install chromium (.ci/run installs it)", allow_module_level=True)

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
CONSOLE_TOKEN = "browser-console-token-7f3a9c2e5b"
XSS_NAME = "<img src=x onerror=alert(1)>"
ACCOUNT_TOKEN = "token-of-the-aircall-account-0001"
VIEWPORT = {"width": 1280, "height": 900}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory, segment_process):
    from tests.outbox_history import seed

    folder = tmp_path_factory.mktemp("console-browser")
    # 50 minutes: the status's hour keeps all of it while the module runs, so its totals only grow.
    seed(folder / "outbox.sqlite3", webhooks=1500, span_seconds=50 * 60, now=time.time())
    # Set up as in production (the account's own webhook token, API credentials): no set-up steps left to show.
    engine = Engine(
        folder, segment_process, ENGINE_CONSOLE_TOKEN=CONSOLE_TOKEN, AIRCALL_WEBHOOK_TOKEN=f"{TOKEN},{ACCOUNT_TOKEN}",
        AIRCALL_API_ID="api-id", AIRCALL_API_TOKEN="api-token",
    ).start()  # fmt: skip
    yield engine
    engine.stop()


@pytest.fixture
def page(browser, server, tmp_path):
    context = browser.new_context(viewport=VIEWPORT, base_url=server.url, accept_downloads=True)
    opened = context.new_page()
    opened.dialogs = []  # a dialog would mean a script of someone's payload ran
    opened.on("dialog", lambda dialog: (opened.dialogs.append(dialog.message), dialog.dismiss()))
    yield opened
    context.close()


def sign_in(page: Page) -> None:
    page.goto("/console/sign-in")
    page.get_by_test_id("console-token").fill(CONSOLE_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("console-status")).to_be_visible()


def shot(page: Page, tmp_path: Path, name: str, docs: str | None = None) -> None:
    page.screenshot(path=tmp_path / f"{name}.png", full_page=True)
    target = os.environ.get("CONSOLE_SCREENSHOTS")
    if target and docs:
        page.screenshot(path=ROOT / target / docs)


def checked(page: Page, after: int = 0) -> int:
    """Waits until the playground has shown the answer to a check later than `after`; returns its number."""
    wait_for(lambda: int(page.locator("#playground").get_attribute("data-checked") or 0) > after, timeout=10,
             interval=0.02, what="the playground's check")  # fmt: skip
    return int(page.locator("#playground").get_attribute("data-checked"))


def test_sign_in_is_required_and_a_wrong_token_is_refused(page, server, tmp_path):
    for path in ["/console/", "/console/webhooks", "/console/dead-letters", "/console/playground"]:
        page.goto(path)
        assert page.url.endswith("/console/sign-in"), path
        expect(page.get_by_test_id("console-token")).to_be_visible()
        assert page.get_by_test_id("webhook-row").count() == 0 and "call.ended" not in page.content()
    assert page.request.get("/console/api/status").status == 401
    shot(page, tmp_path, "sign-in")

    page.get_by_test_id("console-token").fill("not-the-console-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("not the console's")
    assert page.url.endswith("/console/sign-in") and page.get_by_test_id("console-status").count() == 0
    assert "not-the-console-token" not in page.content()

    page.get_by_test_id("console-token").fill(CONSOLE_TOKEN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("console-status")).to_be_visible()
    assert page.url.endswith("/console/")


def test_status_shows_the_counts_after_webhooks_are_posted(page, server, segment_process, tmp_path):
    sign_in(page)
    counts = {name: int(page.locator(f"#{name}-last-hour").inner_text().replace(",", ""))
              for name in ("received", "processed", "delivered")}  # fmt: skip
    assert counts["received"] > 1000  # the seeded hour
    envelopes = [call_webhook(7_000 + n) for n in range(5)]
    for envelope in envelopes:
        assert server.post(envelope).status_code == 200
    segment_process.wait_for_ids({i for e in envelopes for i in expected_ids(e)})
    for name in ("received", "processed", "delivered"):  # the panel refreshes itself every 5 seconds
        expect(page.locator(f"#{name}-last-hour")).to_have_text(f"{counts[name] + 5:,}", timeout=15_000)
    expect(page.get_by_test_id("headline")).to_have_attribute("data-state", "flowing")
    expect(page.get_by_test_id("headline")).to_contain_text("Flowing")
    assert page.get_by_test_id("set-up").count() == 0  # every step done: no checklist
    expect(page.locator("#pending")).to_have_text("0")
    assert page.locator(".chart-received rect").count() >= 50  # a bar for every minute of the seeded 50
    shot(page, tmp_path, "status", docs="console-status.png")


def test_a_webhook_row_opens_to_its_stored_webhook_and_the_messages_sent(page, server, segment_process, tmp_path):
    envelope = sample("user.created")
    envelope["data"]["id"] = 7_100_001
    assert server.post(envelope).status_code == 200
    ids = expected_ids(envelope)
    received = segment_process.wait_for_ids(set(ids))
    sign_in(page)
    page.goto("/console/webhooks")
    first = page.get_by_test_id("webhook-row").first
    expect(first).to_contain_text("user.created")
    expect(first).to_contain_text("2 · 2 delivered")
    shot(page, tmp_path, "webhooks")
    first.locator("td").nth(1).click()  # anywhere on the row
    expect(page).to_have_url(re.compile(r"/console/webhooks/\d+$"))
    stored = json.loads(page.locator("#stored-webhook").inner_text())
    assert stored == {**envelope, "token": ""}  # as stored, the token blanked
    sent = {m["messageId"]: m for m in received["messages"] if m["messageId"] in ids}
    shown = [json.loads(pre.inner_text()) for pre in page.locator("#messages article > pre.json").all()]
    assert {m["messageId"] for m in shown} == set(ids)
    for message in shown:  # exactly what Segment received (its sentAt aside, which the batch adds)
        assert message == {k: v for k, v in sent[message["messageId"]].items() if k != "sentAt"}
    shot(page, tmp_path, "webhook")


def edit(page: Page, text: str) -> int:
    """Replaces the editor's text as typing does (an input event); returns the check it follows."""
    before = int(page.locator("#playground").get_attribute("data-checked") or 0)
    page.get_by_test_id("playground-editor").fill(text)
    return before


def test_playground_changing_event_changes_the_message_within_a_second(page, tmp_path):
    sign_in(page)
    page.goto("/console/playground?file=call.ended.yaml")
    messages = page.get_by_test_id("playground-messages")
    expect(messages).to_contain_text('"event": "call.ended"')
    expect(page.get_by_test_id("playground-payload")).to_have_value(re.compile('"token": ""'))
    original = (MAPPINGS / "call.ended.yaml").read_text()
    edited = original.replace("  event: call.ended", "  event: call.finished")
    edit(page, edited)
    started = time.monotonic()
    expect(messages).to_contain_text('"event": "call.finished"', timeout=5_000)
    assert time.monotonic() - started < 1.0
    expect(page.get_by_test_id("playground-findings")).to_contain_text("No findings")
    assert (MAPPINGS / "call.ended.yaml").read_text() == original  # nothing written to mappings/

    with page.expect_download() as download:
        page.get_by_role("button", name="Download call.ended.yaml").click()
    assert download.value.suggested_filename == "call.ended.yaml"
    assert Path(download.value.path()).read_text() == edited

    edit(page, edited + '  properties:\n    minutes: "{{ (data.duration / 60) | round(1) }}"\n')
    expect(messages).to_contain_text('"minutes": 3.3')
    shot(page, tmp_path, "playground", docs="console-playground.png")


def test_playground_shows_a_jinja_syntax_error_at_its_line(page, tmp_path):
    sign_in(page)
    page.goto("/console/playground?file=call.ended.yaml")
    checked(page)
    text = (MAPPINGS / "call.ended.yaml").read_text() + '  properties:\n    minutes: "{{ data.duration / }}"\n'
    after = edit(page, text)
    checked(page, after)
    findings = page.get_by_test_id("playground-findings")
    expect(findings).to_contain_text("mappings/call.ended.yaml:6:14: template syntax error")
    expect(page.locator("#gutter .bad")).to_have_text("6")  # the line, highlighted in the editor
    expect(page.locator("#backdrop mark.column")).to_have_text('"')  # and its column
    assert page.get_by_test_id("playground-messages").inner_text().strip() == ""
    shot(page, tmp_path, "playground-syntax-error")


def test_playground_refuses_a_sandbox_escape(page, tmp_path):
    sign_in(page)
    page.goto("/console/playground?file=call.ended.yaml")
    checked(page)
    escape = "\"{{ ''.__class__.__mro__[1].__subclasses__() }}\""
    after = edit(page, (MAPPINGS / "call.ended.yaml").read_text().replace("  event: call.ended", f"  event: {escape}"))
    checked(page, after)
    expect(page.get_by_test_id("playground-findings")).to_contain_text(
        "is not allowed: templates run in a sandbox and read only webhook data"
    )
    assert page.get_by_test_id("playground-messages").inner_text().strip() == ""
    shot(page, tmp_path, "playground-sandbox")


def test_a_contact_named_like_html_shows_as_text_and_no_script_runs(page, server, segment_process, tmp_path):
    envelope = sample("contact.created")
    envelope["data"]["id"] = 7_200_001
    envelope["data"]["first_name"] = XSS_NAME
    assert server.post(envelope).status_code == 200
    segment_process.wait_for_ids(set(expected_ids(envelope)))
    sign_in(page)
    page.goto("/console/webhooks")
    page.get_by_test_id("webhook-row").filter(has_text="contact.created").first.click()
    expect(page.locator("#stored-webhook")).to_contain_text(f'"first_name": "{XSS_NAME}"')
    expect(page.locator("#messages")).to_contain_text(XSS_NAME)
    assert page.locator("img").count() == 0  # text, not an element

    page.goto("/console/playground?file=contact.created.yaml")
    checked(page)
    page.get_by_test_id("playground-payload").fill(json.dumps(envelope))
    expect(page.get_by_test_id("playground-messages")).to_contain_text(XSS_NAME)
    assert page.locator("img").count() == 0
    page.wait_for_timeout(300)  # time for an onerror to fire, were there an image
    assert page.dialogs == []
    shot(page, tmp_path, "xss-as-text")


def test_a_post_without_the_csrf_token_is_refused(page, server):
    sign_in(page)
    for path in ["/console/dead-letters/discard", "/console/dead-letters/replay", "/console/sign-out"]:
        answer = page.request.post(path, form={"all": "yes"}, max_redirects=0)
        assert answer.status == 403, path
    answer = page.request.post(
        "/console/api/playground", data={"file": "call.ended.yaml", "text": "", "payload": ""}, max_redirects=0
    )
    assert answer.status == 403
    page.goto("/console/")
    expect(page.get_by_test_id("console-status")).to_be_visible()  # still signed in: sign-out was refused too


def test_replaying_a_dead_letter_from_the_page_delivers_it(page, server, segment_process, tmp_path):
    envelope = sample("call.hungup")
    envelope["data"]["id"] = 7_300_001
    ids = expected_ids(envelope)
    segment_process.control(reject_message_ids=ids)  # Segment refuses it: a dead letter
    try:
        assert server.post(envelope).status_code == 200
        wait_for(lambda: server.health()["outbox"]["dead_letters"] == 1, what="the dead letter")
    finally:
        segment_process.control(reject_message_ids=[])
    sign_in(page)
    page.goto("/console/dead-letters")
    row = page.get_by_test_id("dead-letter-row").filter(has_text=ids[0])
    expect(row).to_contain_text("Segment answered 400")
    shot(page, tmp_path, "dead-letters")
    row.get_by_role("button", name="Replay").click()
    expect(page.locator(".flash")).to_have_text("Replayed 1 dead letter(s): 1 message(s) queued again.")
    segment_process.wait_for_ids(set(ids))
    expect(page.get_by_test_id("dead-letter-row").filter(has_text=ids[0])).to_have_count(0)
    # /healthz's counts may be a second old
    wait_for(lambda: requests.get(f"{server.url}/healthz", timeout=5).json()["outbox"]["dead_letters"] == 0)


def test_a_new_server_waits_for_its_first_webhook_and_ticks_the_set_up_as_it_comes(browser, engine_server, tmp_path):
    fresh = engine_server(with_segment=False, ENGINE_CONSOLE_TOKEN=CONSOLE_TOKEN)  # a first run: no write key
    context = browser.new_context(viewport=VIEWPORT, base_url=fresh.url)
    page = context.new_page()
    try:
        sign_in(page)
        headline = page.get_by_test_id("headline")
        expect(headline).to_contain_text("Waiting for the first webhook")
        expect(page.locator("#sample-command")).to_contain_text(f"curl -s -X POST {fresh.url}/webhooks/aircall")
        assert "Flowing" not in page.get_by_test_id("console-status").inner_text()
        received = page.get_by_test_id("set-up").locator("li").filter(has_text="A webhook received")
        expect(received).to_have_attribute("data-done", "no")
        expect(page.get_by_test_id("set-up")).to_contain_text("Setting up: 0 of 5 done")
        shot(page, tmp_path, "status-first-run", docs="console-first-run.png")
        assert fresh.post(sample("call.ended")).status_code == 200
        expect(received).to_have_attribute("data-done", "yes", timeout=15_000)  # the panel refreshes itself
        expect(headline).to_contain_text("Degraded", timeout=15_000)  # the message waits: no write key
        expect(headline).to_contain_text("SEGMENT_WRITE_KEY is not set")
        expect(page.get_by_test_id("set-up")).to_contain_text("Setting up: 1 of 5 done")
        shot(page, tmp_path, "status-first-webhook")
    finally:
        context.close()


def test_webhooks_are_filtered_from_the_form_and_refused_ones_listed_without_their_content(
    page, server, segment_process, tmp_path
):
    envelope = sample("user.created")
    envelope["data"]["id"] = 7_400_001
    assert server.post(envelope).status_code == 200
    segment_process.wait_for_ids(set(expected_ids(envelope)))  # mapped: the outcome filtered on below
    intruder = {**sample("call.ended"), "token": "a-guessed-token", "event": "call.intruder_event"}
    assert server.post(intruder).status_code == 401
    sign_in(page)
    page.goto("/console/webhooks")
    refused = page.get_by_test_id("refused-row").first
    expect(refused).to_contain_text("wrong token")
    expect(refused).to_contain_text("not shown: not authenticated")
    assert "call.intruder_event" not in page.content() and "a-guessed-token" not in page.content()
    page.get_by_test_id("refused").screenshot(path=tmp_path / "refused.png")

    filters = page.get_by_test_id("webhook-filters")
    filters.get_by_label("Event").fill("user.*")
    filters.get_by_label("Outcome").select_option("mapped")
    filters.get_by_role("button", name="Filter").click()
    expect(page).to_have_url(re.compile(r"/console/webhooks\?event=user\.\*&outcome=mapped"))
    rows = page.get_by_test_id("webhook-row")
    expect(rows.first).to_contain_text("user.created")  # the newest: the one just posted
    events = page.locator('[data-testid="webhook-row"] td:nth-child(2)').all_inner_texts()
    assert len(events) > 1 and all(event.startswith("user.") for event in events)
    expect(filters.get_by_label("Event")).to_have_value("user.*")  # the page keeps what it was asked
    shot(page, tmp_path, "webhooks-filtered")
    page.screenshot(path=tmp_path / "webhooks-filtered-top.png")  # the form and the first rows, as seen

    filters.get_by_label("Call id").fill("12x")
    filters.get_by_role("button", name="Filter").click()
    expect(page.get_by_role("alert")).to_have_text("call: '12x' is not a call id (digits)")
    assert rows.count() == 0
    shot(page, tmp_path, "webhooks-bad-filter")
