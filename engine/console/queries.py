"""What the console's pages show, read from the outbox on a connection of the console's own.

Every read is one of the outbox's console reads (see `# -- console reads` in engine.outbox): bounded by a limit
or a time window and served by an index, so a page costs the same with a thousand messages or a million.
"""

from __future__ import annotations

import asyncio
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from engine.aircall.refused import RECENT, Refused
from engine.aircall.watch import ACTIVE, UNKNOWN
from engine.console.charts import Chart, bar_chart
from engine.outbox import (
    DeadLetter,
    FoundWebhooks,
    Outbox,
    StoredMessage,
    WebhookFilter,
    WebhookSummary,
    open_outbox,
    stored_key,
)
from engine.server.health import DEAD_LETTER_WINDOW_SECONDS, Health, readiness

if TYPE_CHECKING:
    from engine.server.runtime import Runtime

RECENT_WEBHOOKS = 300  # rows on the webhooks page
DEAD_LETTER_PAGE = 100  # rows on the dead letters page
MINUTES = 60  # the status chart's span
COUNT_SCAN_LIMIT = 200_000  # messages read at most to count the recent webhooks' messages
DEAD_LETTERS_SCANNED = 2_000  # dead letters read at most to mark the recent webhooks that became one
MESSAGE_SLACK_SECONDS = 5.0  # a webhook's messages are committed with its processed mark: the same moment
# The token of the sample webhooks (tests/fixtures) and of README's first command: a server that knows no other
# is not connected to an Aircall account yet (`engine aircall connect --write-env` adds the account's own).
SAMPLE_TOKEN = "45b1b6f1a2c3d4e5f60718293a4b5c6d"


class Reads:
    """The console's read-only outbox, opened on first use. One thread uses it (SQLite connections are not shared
    between threads), off the event loop; the gateway's commits go through the committer's own connection and
    never wait on it (SQLite in WAL mode: readers do not block the writer)."""

    def __init__(self, setting: str) -> None:
        self._setting = setting
        self._outbox: Outbox | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="console-reads")

    async def __call__(self, method: str, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._read, method, args)

    def _read(self, method: str, args: tuple[Any, ...]) -> Any:
        if self._outbox is None:
            self._outbox = open_outbox(self._setting, read_only=True)
        return getattr(self._outbox, method)(*args)

    def close(self) -> None:
        def close_outbox() -> None:
            if self._outbox is not None:
                self._outbox.close()
                self._outbox = None

        self._thread.submit(close_outbox).result()
        self._thread.shutdown()


# -- status ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One step of setting the bridge up, ticked once done (the status page's checklist)."""

    title: str
    done: bool
    how: str  # what to do while it is not done


@dataclass
class Status:
    stats: Any  # OutboxStats
    charts: list[Chart]
    totals: dict[str, int]
    health: Health  # readiness, as GET /readyz answers it: the headline
    problems: list[str]  # what else wants a person's eye, though data flows (held webhooks, old dead letters)
    steps: list[Step]
    webhook_url: str  # where to send the sample while waiting for the first webhook
    estimated: bool  # received and processed counted from id ranges: a busy hour (engine.outbox.Activity)
    delivery: Any  # DeliveryState
    segment_configured: bool
    segment_api_url: str
    processing_running: bool
    processing_restarts: int
    mappings: int
    events: list[str] | None  # None: all
    numbers: list[str]  # empty: every number
    now: float


async def status(runtime: Runtime, reads: Reads, webhook_url: str) -> Status:
    now = time.time()
    stats = await runtime.stats()  # the /healthz counts, on the runtime's reader (cached a second)
    health = await readiness(runtime)  # the same counts: /readyz's answer
    start = (now // 60) * 60 - (MINUTES - 1) * 60  # whole minutes; the last one is the current minute
    activity = await reads("activity", start, MINUTES)
    series = {"received": activity.received, "processed": activity.processed, "delivered": activity.delivered}
    titles = {
        "received": "Webhooks received",
        "processed": "Webhooks processed (mapped or dead-lettered)",
        "delivered": "Messages delivered to Segment",
    }
    charts = [bar_chart(name, titles[name], counts, start) for name, counts in series.items()]
    delivery = runtime.delivery.state
    settings = runtime.settings
    numbers: list[str] = []
    if settings.numbers is not None:
        numbers = [f"#{number_id}" for number_id in sorted(settings.numbers.ids)] + sorted(settings.numbers.digits)
    return Status(
        stats=stats,
        charts=charts,
        totals={name: sum(counts) for name, counts in series.items()},
        health=health,
        problems=_problems(runtime, stats, now),
        steps=_steps(runtime, stats, health),
        webhook_url=webhook_url,
        estimated=activity.estimated,
        delivery=delivery,
        segment_configured=runtime.delivery.client is not None,
        segment_api_url=settings.segment_api_url,
        processing_running=runtime.processor.alive,
        processing_restarts=runtime.processor.restarts,
        mappings=len(runtime.mappings),
        events=None if settings.events.everything else sorted(settings.events.listed or ()),
        numbers=numbers,
        now=now,
    )


def _problems(runtime: Runtime, stats: Any, now: float) -> list[str]:
    """What a person should look at though data flows (what stops it is the health's reasons), most pressing
    first."""
    problems = []
    refused = _refused_lately(runtime, now)
    if refused:
        problems.append(refused)
    paused = runtime.delivery.state.paused_until
    if paused and paused > now:
        problems.append(f"Delivery is paused for {paused - now:.0f} s after an error from Segment")
    if not runtime.processor.alive:
        problems.append("The processing process is not running: stored webhooks wait to be mapped")
    settings = runtime.settings
    if stats.waiting_for_api and settings.aircall_api_id and settings.aircall_api_token:
        problems.append(
            f"{stats.waiting_for_api:,} webhooks wait for Aircall's REST API, which their mapping reads: the API "
            "cannot answer now (the server's log says why); they are tried again"
        )
    if stats.unmapped_total:
        events = ", ".join(sorted(stats.unmapped, key=lambda e: (-stats.unmapped[e], e))[:10])
        if stats.unmapped_events > 10:
            events += f" and {stats.unmapped_events - 10} more"
        problems.append(
            f"{stats.unmapped_total:,} webhooks are held because no mapping maps their event ({events}): add the "
            "mapping and restart the server, and they are mapped"
        )
    growing = stats.newest_dead_letter_age is not None and stats.newest_dead_letter_age < DEAD_LETTER_WINDOW_SECONDS
    if stats.dead_letters and not growing:  # growing: readiness says so already, with the count
        plural = "dead letter waits" if stats.dead_letters == 1 else "dead letters wait"
        problems.append(f"{stats.dead_letters:,} {plural} for a replay or a discard")
    return problems


REFUSED_RECENT_SECONDS = 15 * 60  # 401s this recent make the status page point at the token


def _refused_lately(runtime: Runtime, now: float) -> str | None:
    """A wrong token, diagnosed on the page: webhooks refused with 401 lately by the process that answers."""
    lately = [r for r in runtime.refused.newest() if r.status == 401 and now - r.at < REFUSED_RECENT_SECONDS]
    if not lately:
        return None
    reasons = ", ".join(sorted({r.reason for r in lately}))
    return (
        f"{len(lately)} webhook(s) refused with 401 by this server process in the last 15 minutes ({reasons}), "
        f"the newest from "
        f"{lately[0].client or 'an unknown address'}: is AIRCALL_WEBHOOK_TOKEN the token of Aircall's webhook? "
        "Webhooks lists them"
    )


def _steps(runtime: Runtime, stats: Any, health: Health) -> list[Step]:
    """Setting the bridge up, in the order a newcomer does it; each ticked from what the server knows."""
    settings = runtime.settings
    api = bool(settings.aircall_api_id and settings.aircall_api_token)
    own_token = any(token != SAMPLE_TOKEN for token in settings.webhook_tokens)
    # With API credentials the server looks at Aircall's webhooks (engine.aircall.watch): connected is then
    # what Aircall says, not a guess from the token.
    watched = runtime.aircall_webhook()
    connected = own_token if watched is None or watched.state == UNKNOWN else watched.state == ACTIVE
    connect_how = (
        watched.detail
        if watched is not None and watched.problem
        else "Run `engine aircall connect --url https://YOUR-HOST/webhooks/aircall --write-env` and restart: it "
        "creates the webhook in Aircall and puts its token in AIRCALL_WEBHOOK_TOKEN"
        + (" (the samples' token is the only one set now)." if settings.webhook_tokens else ".")
    )
    return [
        Step(
            "A webhook received",
            not health.first_webhook_awaited,
            "Send the sample webhook with the command above, or connect Aircall (below)."
            if settings.webhook_tokens
            else "Set AIRCALL_WEBHOOK_TOKEN and restart: until then every webhook is refused with 401.",
        ),
        Step(
            "Aircall's API credentials set",
            api,
            "Create an API key in Aircall's dashboard (Integrations, API keys) and set AIRCALL_API_ID and "
            "AIRCALL_API_TOKEN: `engine aircall connect` uses them, and mappings that fetch transcripts.",
        ),
        Step("Aircall connected", connected, connect_how),
        Step(
            "Segment's write key set",
            runtime.delivery.client is not None,
            "Set SEGMENT_WRITE_KEY to the write key of a Segment HTTP API source and restart: messages wait in "
            "the outbox until then, and are sent once it is set.",
        ),
        Step(
            "A message delivered to Segment",
            bool(stats.delivered) or runtime.delivery.state.last_success_at is not None,
            "Once the write key is set, the messages waiting are sent; Delivery (below) says what Segment answers.",
        ),
    ]


# -- recent webhooks ---------------------------------------------------------------------------------------------


@dataclass
class WebhookRow:
    summary: WebhookSummary
    outcome: str  # waiting, held (no mapping maps its event), mapped, dead letter
    messages: int | None  # None: not counted (see Webhooks.complete)
    delivered: int | None


@dataclass
class Webhooks:
    rows: list[WebhookRow]
    complete: bool  # False: too many messages since the oldest row to count them all
    older: int | None  # `before` for the next page
    searched_down_to: int | None = None  # the lowest id the page read (a filtered page reads a bounded window)


async def recent_webhooks(reads: Reads, before: int | None = None, found: WebhookFilter | None = None) -> Webhooks:
    page: FoundWebhooks = await reads("find_webhooks", found or WebhookFilter(), RECENT_WEBHOOKS, before)
    summaries = page.rows
    if not summaries:
        return Webhooks([], True, page.next_before, page.searched_down_to)
    oldest = min(s.received_at for s in summaries)
    counts, complete = await reads("message_counts", [s.key for s in summaries], oldest, COUNT_SCAN_LIMIT)
    letters: list[DeadLetter] = await reads("dead_letters_since", oldest, DEAD_LETTERS_SCANNED)
    dead = {stored_key(letter.webhook) for letter in letters if letter.replayed_at is None}
    rows = []
    for summary in summaries:
        count = counts.get(summary.key)
        messages, delivered = count if count else ((0, 0) if complete else (None, None))
        if summary.processed_at is None:
            outcome, messages, delivered = "waiting", None, None
        elif summary.held:
            outcome = "held"
        elif summary.key in dead:
            outcome = "dead letter"
        else:
            outcome = "mapped"
        rows.append(WebhookRow(summary, outcome, messages, delivered))
    return Webhooks(rows, complete, page.next_before, page.searched_down_to)


@dataclass
class RefusedList:
    """What the gateway answered without storing it, as the process serving the page kept it."""

    rows: list[Refused]
    counts: dict[str, int]  # by outcome, since `since`
    since: float  # when this process started
    kept: int  # how many it keeps


def refused(runtime: Runtime) -> RefusedList:
    kept = runtime.refused
    return RefusedList(kept.newest(), dict(sorted(kept.counts.items())), kept.started, RECENT)


@dataclass
class ShownMessage:
    message: StoredMessage
    pretty: str  # the body, indented for reading
    exact: str  # the body exactly as sent


@dataclass
class WebhookDetail:
    summary: WebhookSummary
    body: str  # indented, token blanked
    messages: list[ShownMessage]
    dead_letters: list[DeadLetter] = field(default_factory=list)


async def webhook_detail(reads: Reads, webhook_id: int) -> WebhookDetail | None:
    found = await reads("webhook_body", webhook_id)
    if found is None:
        return None
    summary, body = found
    letters: list[DeadLetter] = await reads("dead_letters_since", summary.received_at, DEAD_LETTERS_SCANNED)
    letters = [letter for letter in letters if stored_key(letter.webhook) == summary.key]
    moments = [summary.processed_at] if summary.processed_at is not None else []
    moments += [letter.replayed_at for letter in letters if letter.replayed_at is not None]
    messages = await reads("messages_of", summary.key, moments, MESSAGE_SLACK_SECONDS) if moments else []
    shown = [ShownMessage(m, pretty_json(m.body), m.body.decode("utf-8", "replace")) for m in messages]
    return WebhookDetail(summary, webhook_json(body), shown, letters)


# -- dead letters ------------------------------------------------------------------------------------------------


@dataclass
class DeadLetterRow:
    letter: DeadLetter
    webhook: str  # indented, token blanked
    webhook_id: int | None  # the stored webhook's page, when it is still there


@dataclass
class DeadLetters:
    rows: list[DeadLetterRow]
    older: int | None


async def dead_letters(reads: Reads, before: int | None = None) -> DeadLetters:
    letters: list[DeadLetter] = await reads("recent_dead_letters", DEAD_LETTER_PAGE, before)
    keys = {letter.id: stored_key(letter.webhook) for letter in letters}
    ids: dict[str, int] = await reads("webhook_ids", sorted(set(keys.values())))
    rows = [DeadLetterRow(letter, webhook_json(letter.webhook), ids.get(keys[letter.id])) for letter in letters]
    return DeadLetters(rows, letters[-1].id if len(letters) == DEAD_LETTER_PAGE else None)


# -- formatting --------------------------------------------------------------------------------------------------


def webhook_json(body: bytes) -> str:
    """A stored webhook, indented, its token blanked (the outbox stores it blanked already; this is a second lock)."""
    try:
        document = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace")
    if isinstance(document, dict) and "token" in document:
        document["token"] = ""
    return json.dumps(document, indent=2, ensure_ascii=False)


def pretty_json(body: bytes) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, ensure_ascii=False)
    except ValueError:
        return body.decode("utf-8", "replace")
