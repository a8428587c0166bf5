"""Everything that lives as long as the server process: built once in the app's lifespan, torn down after it."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field

from engine.aircall.api import AircallClient
from engine.aircall.events import known_events
from engine.aircall.refused import RecentRefusals
from engine.aircall.selection import Selection
from engine.aircall.watch import Watcher, WebhookWatch
from engine.aircall.webhook import Gateway
from engine.config import ConfigError, Settings
from engine.mapping.findings import MappingsFolderError
from engine.mapping.load import Mappings, load_mappings, mapping_files
from engine.outbox import Outbox, OutboxStats, describe_db, open_outbox
from engine.outbox.committer import Committer
from engine.processing.child import ProcessingProcess
from engine.segment.client import SegmentClient
from engine.segment.delivery import Delivery, DeliveryPolicy
from engine.server.health import MappingsOnDisk
from engine.server.metrics import Metrics

log = logging.getLogger("engine.server")

STATS_MAX_AGE = 1.0  # seconds a /healthz or /metrics answer may reuse outbox counts: probes are frequent


@dataclass
class Runtime:
    settings: Settings
    mappings: Mappings
    selection: Selection
    outbox: Outbox
    committer: Committer
    processor: ProcessingProcess
    delivery: Delivery
    metrics: Metrics
    token_digests: tuple[bytes, ...]
    known_events: frozenset[str]
    mappings_on_disk: MappingsOnDisk  # readiness: whether the folder still loads as it is now
    _reader: Outbox
    # What the gateway answered without storing (refused, ignored), for the console: this process's, in memory.
    refused: RecentRefusals = field(default_factory=RecentRefusals)
    watcher: Watcher | None = None  # with API credentials: whether Aircall still sends (engine.aircall.watch)
    _stats: tuple[float, OutboxStats] | None = None
    _stats_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def event_label(self, event: str | None) -> str:
        """Events as metric labels, bounded: what no mapping and no Aircall documentation names is 'other'."""
        if event is None:
            return "unknown"
        return event if isinstance(event, str) and event in self.known_events else "other"

    def gateway(self) -> Gateway:
        """What the webhook route is handed (engine.aircall.webhook): the settings it reads, the append, the
        counts it keeps; nothing else of the server."""
        settings = self.settings
        return Gateway(
            max_body_bytes=settings.max_body_bytes,
            body_timeout_seconds=settings.body_timeout_seconds,
            token_digests=self.token_digests,
            event_label=self.event_label,
            selection=self.selection,
            append=self.committer.append,
            refused=self.refused,
            observe=self.metrics.webhook,
        )

    async def stats(self) -> OutboxStats:
        """Outbox counts, read on a connection of their own so that a count never delays a commit."""
        async with self._stats_lock:
            if self._stats is None or time.monotonic() - self._stats[0] > STATS_MAX_AGE:
                stats = await asyncio.to_thread(self._reader.stats)
                self._stats = (time.monotonic(), stats)
                self.metrics.outbox(stats)
            return self._stats[1]

    def aircall_webhook(self) -> WebhookWatch | None:
        """The last look at Aircall's webhook; None when it is not watched or not looked at yet."""
        return self.watcher.latest if self.watcher is not None else None

    async def start(self) -> None:
        self.committer.start()
        self.processor.start()
        self._tasks = [asyncio.create_task(self.delivery.run(), name="delivery")]
        if self.watcher is not None:
            self.watcher.start()

    async def stop(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()
        await self.processor.stop()
        await self.delivery.stop()
        for task in self._tasks:
            await task
        await asyncio.to_thread(self.committer.stop)
        self._reader.close()


def load_server_mappings(settings: Settings) -> Mappings:
    """The mappings; MappingError or ConfigError otherwise. An enabled event without a mapping is not an error:
    its webhooks are stored and held until a mapping for it is loaded."""
    try:
        return load_mappings(settings.mappings_dir)
    except MappingsFolderError as exc:
        raise ConfigError(f"ENGINE_MAPPINGS: {exc}") from None


def unknown_listed_events(settings: Settings, mappings: Mappings) -> list[str]:
    """Events AIRCALL_EVENTS names that neither Aircall's catalogue nor a mapping knows: most likely a typo
    (`call.endded`), which would leave the event meant out. Said at start-up, not refused: Aircall adds events."""
    listed = settings.events.listed or frozenset()
    return sorted(listed - known_events() - mappings.by_event.keys())


def build_runtime(settings: Settings) -> Runtime:
    """Load and check everything; raise ConfigError or MappingError with a message naming what is wrong."""
    on_disk = MappingsOnDisk(settings.mappings_dir)
    before = on_disk.signature()  # before loading: an edit made meanwhile is looked at again
    mappings = load_server_mappings(settings)
    on_disk.loaded(before)
    # The files as they were loaded: the processing process maps with these very files, whatever is edited on
    # disk while the server runs (an edit takes effect at the next restart, as for the server).
    files = {path.name: path.read_bytes() for path in mapping_files(settings.mappings_dir)}
    outbox = _open(settings.db)
    metrics = Metrics()

    def committed(webhooks: int) -> None:
        # On the committer's thread, once per group commit: the processing process is woken once for the group
        # (a byte on a socket), not once per webhook on the event loop.
        metrics.committed(webhooks)
        processor.wake()

    committer = Committer(outbox, on_commit=committed)
    client = (
        SegmentClient(settings.segment_api_url, settings.segment_write_key, settings.segment_timeout_seconds)
        if settings.segment_write_key
        else None
    )
    delivery = Delivery(
        committer,
        client,
        DeliveryPolicy(
            lease_seconds=settings.lease_seconds,
            backoff_base=settings.backoff_base_seconds,
            backoff_cap=settings.backoff_cap_seconds,
            max_age_seconds=settings.max_age_hours * 3600,
            retention_seconds=settings.retention_days * 86400,
        ),
        observe=metrics.delivery,
    )

    def processed(mapped: int, dead: int, new_messages: int) -> None:
        metrics.processed(mapped, dead, new_messages)
        if new_messages:
            delivery.wake()

    processor = ProcessingProcess(settings, files, on_report=processed)
    return Runtime(
        settings=settings,
        mappings=mappings,
        selection=Selection(settings.events, settings.numbers),
        outbox=outbox,
        committer=committer,
        processor=processor,
        delivery=delivery,
        metrics=metrics,
        token_digests=tuple(hashlib.sha256(t.encode()).digest() for t in settings.webhook_tokens),
        known_events=known_events() | mappings.by_event.keys(),
        _reader=_open(settings.db),
        mappings_on_disk=on_disk,
        watcher=_watcher(settings, metrics),
    )


def _watcher(settings: Settings, metrics: Metrics) -> Watcher | None:
    """A watch of the Aircall webhook, where there are API credentials and a token to recognise it by."""
    if not (settings.aircall_api_id and settings.aircall_api_token and settings.webhook_tokens):
        return None
    if not settings.aircall_watch_seconds:
        return None
    # One retry and a short timeout: the next look is minutes away, and a look is never urgent. No pace of its
    # own: AIRCALL_WATCH_SECONDS is the pace (two requests a look at most).
    client = AircallClient(
        settings.aircall_api_url, settings.aircall_api_id, settings.aircall_api_token,
        timeout=10.0, max_retries=1, max_throttled=1,
    )  # fmt: skip
    return Watcher(client, settings.webhook_tokens, settings.aircall_watch_seconds, observe=metrics.aircall_webhook)


def _open(setting: str) -> Outbox:
    try:
        return open_outbox(setting)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except Exception as exc:  # sqlite3 errors, a folder we cannot create, PostgreSQL unreachable
        raise ConfigError(f"ENGINE_DB: cannot open the outbox at {describe_db(setting)}: {exc}") from None
