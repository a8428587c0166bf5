"""Prometheus metrics, in a registry of the app's own (no process-wide globals).

With `--workers N`, a scrape reaches one worker, so each process's own counts would be a fraction of the
truth. When PROMETHEUS_MULTIPROC_DIR is set (`engine serve --workers N` sets it), prometheus-client keeps the
counters and histograms in files there and the scraped worker sums every process's. The outbox gauges are
read from the outbox at scrape time instead: it is shared, so any worker's reading is the whole server's.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from engine.outbox import OutboxStats
from engine.segment.client import Answer

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for it

_PROMETHEUS_FILE = re.compile(r"(counter|gauge_\w+|histogram|summary)_\d+\.db")
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class OutboxGauges(Collector):
    """Depth, oldest age and dead letters, from the last outbox reading."""

    def __init__(self) -> None:
        self.stats: OutboxStats | None = None

    def collect(self) -> Iterator[Metric]:
        stats = self.stats
        if stats is None:
            return
        yield GaugeMetricFamily("outbox_pending_messages", "Messages waiting for delivery", stats.pending)
        yield GaugeMetricFamily(
            "outbox_oldest_pending_age_seconds", "Age of the oldest waiting message", stats.oldest_pending_age or 0.0
        )
        yield GaugeMetricFamily("outbox_dead_letters", "Dead letters not yet replayed", stats.dead_letters)
        yield GaugeMetricFamily(
            "outbox_unprocessed_webhooks", "Webhooks stored by the gateway, not yet mapped", stats.unprocessed
        )
        yield GaugeMetricFamily(
            "outbox_oldest_unprocessed_age_seconds",
            "Age of the oldest webhook waiting to be mapped: the processing lag",
            stats.oldest_unprocessed_age or 0.0,
        )
        yield GaugeMetricFamily(
            "outbox_waiting_for_api_webhooks",
            "Webhooks whose mapping reads Aircall's REST API, put back until it can answer",
            stats.waiting_for_api,
        )
        held = GaugeMetricFamily(
            "outbox_unmapped_webhooks",
            "Webhooks held because no mapping maps their event, mapped once one is loaded",
            labels=["event"],
        )
        for event, count in _bounded(stats.unmapped, stats.unmapped_total, UNMAPPED_LABELS).items():
            held.add_metric([event], count)
        yield held


UNMAPPED_LABELS = 100  # events as labels at most: past it, the fewest are counted together as "other"


def _bounded(counts: dict[str, int], total: int, limit: int) -> dict[str, int]:
    """The most numerous events by name, and the rest (of `total`) as "other"."""
    ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
    if len(ranked) < limit and sum(counts.values()) == total:
        return dict(ranked)
    kept = dict(ranked[: limit - 1])
    kept["other"] = total - sum(kept.values())
    return kept


class Metrics:
    def __init__(self) -> None:
        # Only the environment can switch it on: prometheus-client chooses file-backed values when it is imported.
        multiprocess_dir = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
        self.registry = CollectorRegistry()
        self.gauges = OutboxGauges()
        self.registry.register(self.gauges)
        if multiprocess_dir:
            # The metrics live in the directory's files; registering them here as well would count twice.
            MultiProcessCollector(self.registry, path=multiprocess_dir)
            r = None
        else:
            r = self.registry
        self.webhooks = Counter(
            "aircall_webhooks", "Webhooks received, by event and outcome", ["event", "outcome"], registry=r
        )
        self.webhook_seconds = Histogram(
            "aircall_webhook_seconds", "Time to answer a webhook, commit included", buckets=_FAST, registry=r
        )
        self.commit_webhooks = Histogram(
            "outbox_commit_webhooks",
            "Webhooks sharing one outbox commit (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.processed_webhooks = Counter(
            "webhooks_processed", "Stored webhooks mapped, by outcome (mapped, dead_lettered)", ["outcome"], registry=r
        )
        self.enqueued = Counter("segment_messages_enqueued", "Messages newly stored in the outbox", registry=r)
        self.delivered = Counter("segment_messages_delivered", "Messages Segment accepted", registry=r)
        self.retried = Counter("segment_messages_retried", "Messages scheduled for another attempt", registry=r)
        self.dead = Counter("segment_messages_dead_lettered", "Messages moved to the dead letters", registry=r)
        self.requests = Counter("segment_requests", "Batch requests to Segment, by status", ["status"], registry=r)
        self.request_seconds = Histogram(
            "segment_request_seconds", "Latency of batch requests to Segment", buckets=_FAST, registry=r
        )

    def webhook(self, event: str, outcome: str, seconds: float) -> None:
        self.webhooks.labels(event, outcome).inc()
        self.webhook_seconds.observe(seconds)

    def committed(self, webhooks: int) -> None:
        self.commit_webhooks.observe(webhooks)

    def processed(self, mapped: int, dead: int, new_messages: int) -> None:
        if mapped:
            self.processed_webhooks.labels("mapped").inc(mapped)
        if dead:
            self.processed_webhooks.labels("dead_lettered").inc(dead)
        self.enqueued.inc(new_messages)

    def delivery(self, kind: str, count: int, answer: Answer | None) -> None:
        if kind == "request" and answer is not None:
            self.requests.labels(str(answer.status) if answer.status is not None else "error").inc()
            self.request_seconds.observe(answer.seconds)
        elif kind == "delivered":
            self.delivered.inc(count)
        elif kind == "retried":
            self.retried.inc(count)
        elif kind == "dead":
            self.dead.inc(count)

    def outbox(self, stats: OutboxStats) -> None:
        self.gauges.stats = stats

    def render(self) -> bytes:
        return generate_latest(self.registry)


@contextlib.contextmanager
def shared_across_workers(workers: int) -> Iterator[None]:
    """Around `uvicorn.run` with several workers: a fresh directory where their metrics meet, set in the
    environment they inherit. The operator's own PROMETHEUS_MULTIPROC_DIR is used if set; it is emptied first,
    as prometheus-client requires, so that a restart does not add the last run's counts again."""
    chosen = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    if chosen:
        if not Path(chosen).is_dir():
            raise ValueError(f"{MULTIPROCESS_DIR_VARIABLE}: {chosen!r} is not a folder; create it (empty) or unset it")
        # Only prometheus-client's own files (counter_1234.db...): the folder may hold anything else, even an
        # outbox named *.db.
        for stale in Path(chosen).glob("*.db"):
            if _PROMETHEUS_FILE.fullmatch(stale.name):
                stale.unlink()
        yield
    elif workers > 1:
        made = tempfile.mkdtemp(prefix="engine-metrics-")
        os.environ[MULTIPROCESS_DIR_VARIABLE] = made
        try:
            yield
        finally:
            os.environ.pop(MULTIPROCESS_DIR_VARIABLE, None)
            shutil.rmtree(made, ignore_errors=True)
    else:
        yield
