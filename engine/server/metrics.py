"""Prometheus metrics, in a registry of the app's own (no process-wide globals).

Every metric the app defines is named `aircall_segment_...` (PREFIX); counters end in `_total` and durations
in `_seconds`, as prometheus-client and Prometheus's naming conventions have them. Beside them, the names every
exporter shares: `process_*` and `python_info`.

With `--workers N`, a scrape reaches one worker, so each process's own counts would be a fraction of the
truth. When PROMETHEUS_MULTIPROC_DIR is set (`engine serve --workers N` sets it), prometheus-client keeps the
counters and histograms in files there and the scraped worker sums every process's. The outbox gauges are
read from the outbox at scrape time instead: it is shared, so any worker's reading is the whole server's. The
process metrics are the whole server's too (ServerProcesses), for the same reason.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from engine import __version__
from engine.aircall.watch import STATES as WATCH_STATES
from engine.aircall.watch import WebhookWatch
from engine.outbox import OutboxStats
from engine.segment.destination import Answer

MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for it
PREFIX = "aircall_segment_"

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
        yield GaugeMetricFamily(PREFIX + "outbox_pending_messages", "Messages waiting for delivery", stats.pending)
        yield GaugeMetricFamily(
            PREFIX + "outbox_oldest_pending_age_seconds",
            "Age of the oldest waiting message",
            stats.oldest_pending_age or 0.0,
        )
        yield GaugeMetricFamily(PREFIX + "outbox_dead_letters", "Dead letters not yet replayed", stats.dead_letters)
        yield GaugeMetricFamily(
            PREFIX + "outbox_unprocessed_webhooks", "Webhooks stored by the gateway, not yet mapped", stats.unprocessed
        )
        yield GaugeMetricFamily(
            PREFIX + "outbox_oldest_unprocessed_age_seconds",
            "Age of the oldest webhook waiting to be mapped: the processing lag",
            stats.oldest_unprocessed_age or 0.0,
        )
        yield GaugeMetricFamily(
            PREFIX + "outbox_waiting_for_api_webhooks",
            "Webhooks whose mapping reads Aircall's REST API, put back until it can answer",
            stats.waiting_for_api,
        )
        held = GaugeMetricFamily(
            PREFIX + "outbox_unmapped_webhooks",
            "Webhooks held because no mapping maps their event, mapped once one is loaded",
            labels=["event"],
        )
        for event, count in _bounded(stats.unmapped, stats.unmapped_total, UNMAPPED_LABELS).items():
            held.add_metric([event], count)
        yield held


class BuildInfo(Collector):
    """`aircall_segment_build_info{version,python} 1`: which release runs, on which Python, for dashboards to
    show and to join on (the ecosystem's `*_build_info` convention)."""

    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily(
            PREFIX + "build_info", "The running release and Python, as labels; always 1", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info


class ServerProcesses(Collector):
    """The standard `process_*` metrics for the server as a whole: every process of its tree added up.

    prometheus-client's ProcessCollector describes the one process that answers the scrape. Here that would
    leave out the processing child, where the mapping's CPU is spent, and under `--workers N` it would describe
    whichever worker answered: a start time and a CPU counter that jump from one worker to another at each
    scrape, which Prometheus reads as restarts. So the tree is taken from the server's first process (uvicorn's
    supervisor under `--workers N`, the one process otherwise), read from /proc at scrape time as
    ProcessCollector reads its one process, and: CPU seconds, resident and virtual memory, open file
    descriptors summed; the start time and the descriptor limit (every process inherits it) the first
    process's. `aircall_segment_processes` says how many processes were added up. Where /proc is missing
    (not Linux) there are no process metrics, as with ProcessCollector.
    """

    _FIRST_ONLY = ("process_start_time_seconds", "process_max_fds")

    def __init__(self, root: int | None = None, proc: str = "/proc") -> None:
        self.root = root if root is not None else server_root_pid()
        self.proc = proc

    def collect(self) -> Iterator[Metric]:
        pids = self.tree()
        totals: dict[str, tuple[Metric, float]] = {}
        for pid in pids:
            for family in ProcessCollector(pid=lambda pid=pid: pid, proc=self.proc, registry=None).collect():
                value = family.samples[0].value
                if family.name in totals:
                    if family.name in self._FIRST_ONLY:
                        continue
                    value += totals[family.name][1]
                totals[family.name] = (family, value)
        if not totals:
            return
        for name, (family, value) in totals.items():
            documentation = family.documentation
            if name not in self._FIRST_ONLY:
                documentation = f"{documentation.rstrip('.')}, all the server's processes together."
            if family.type == "counter":
                yield CounterMetricFamily(name, documentation, value=value)
            else:
                yield GaugeMetricFamily(name, documentation, value=value)
        yield GaugeMetricFamily(PREFIX + "processes", "Processes of the server that process_* add up", len(pids))

    def tree(self) -> list[int]:
        """The root and its descendants, root first; processes that ended meanwhile are skipped by the reads."""
        found, queue = [], [self.root]
        while queue:
            pid = queue.pop(0)
            found.append(pid)
            queue.extend(child for child in self._children(pid) if child not in found)
        return found

    def _children(self, pid: int) -> list[int]:
        # A process's children are listed per thread that started them (the processing child is started on the
        # event loop's, a playground worker on another): every thread's list.
        children: list[int] = []
        with contextlib.suppress(OSError):
            for task in os.scandir(f"{self.proc}/{pid}/task"):
                with contextlib.suppress(OSError), open(f"{task.path}/children") as listed:
                    children.extend(int(child) for child in listed.read().split())
        return children


def server_root_pid() -> int:
    """The server's first process: uvicorn's supervisor when this is one of its `--workers` (started by
    multiprocessing), else this process."""
    parent = multiprocessing.parent_process()
    return parent.pid if parent is not None and parent.pid is not None else os.getpid()


UNMAPPED_LABELS = 100  # events as labels at most: past it, the fewest are counted together as "other"


def _bounded(counts: dict[str, int], total: int, limit: int) -> dict[str, int]:
    """The most numerous events by name, and the rest (of `total`) as "other"."""
    ranked = sorted(counts.items(), key=lambda pair: (-pair[1], pair[0]))
    if len(ranked) < limit and sum(counts.values()) == total:
        return dict(ranked)
    kept = dict(ranked[: limit - 1])
    kept["other"] = total - sum(kept.values())
    return kept


class AircallWebhookGauge(Collector):
    """The last look at the Aircall webhook (engine.aircall.watch), one series a state, the current one 1. Each
    process looks for itself, so the answering process's own look is as true as any."""

    def __init__(self) -> None:
        self.latest: WebhookWatch | None = None

    def collect(self) -> Iterator[Metric]:
        latest = self.latest
        if latest is None:  # not watched (no API credentials), or not looked at yet
            return
        state = GaugeMetricFamily(
            PREFIX + "aircall_webhook_state",
            "Aircall's webhook for this server at the last look: active, disabled (Aircall stopped sending), "
            "missing (no webhook carries the token) or unknown (the API did not answer)",
            labels=["state"],
        )
        for name in WATCH_STATES:
            state.add_metric([name], 1.0 if latest.state == name else 0.0)
        yield state
        yield GaugeMetricFamily(
            PREFIX + "aircall_webhook_checked_timestamp_seconds", "When it was last looked at", latest.checked_at
        )


class Metrics:
    def __init__(self) -> None:
        # Only the environment can switch it on: prometheus-client chooses file-backed values when it is imported.
        multiprocess_dir = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
        self.registry = CollectorRegistry()
        self.gauges = OutboxGauges()
        self.registry.register(self.gauges)
        self.registry.register(BuildInfo())
        self.watch = AircallWebhookGauge()
        self.registry.register(self.watch)
        self.registry.register(ServerProcesses())
        PlatformCollector(registry=self.registry)  # python_info
        if multiprocess_dir:
            # The metrics live in the directory's files; registering them here as well would count twice.
            MultiProcessCollector(self.registry, path=multiprocess_dir)
            r = None
        else:
            r = self.registry
        self.webhooks = Counter(
            PREFIX + "webhooks", "Webhooks received, by event and outcome", ["event", "outcome"], registry=r
        )
        self.webhook_seconds = Histogram(
            PREFIX + "webhook_duration_seconds", "Time to answer a webhook, commit included", buckets=_FAST, registry=r
        )
        self.commit_webhooks = Histogram(
            PREFIX + "outbox_commit_webhooks",
            "Webhooks sharing one outbox commit (group commit)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.processed_webhooks = Counter(
            PREFIX + "webhooks_processed",
            "Stored webhooks mapped, by outcome (mapped, dead_lettered)",
            ["outcome"],
            registry=r,
        )
        self.enqueued = Counter(PREFIX + "messages_enqueued", "Messages newly stored in the outbox", registry=r)
        self.delivered = Counter(PREFIX + "messages_delivered", "Messages Segment accepted", registry=r)
        self.retried = Counter(PREFIX + "messages_retried", "Messages scheduled for another attempt", registry=r)
        self.dead = Counter(PREFIX + "messages_dead_lettered", "Messages moved to the dead letters", registry=r)
        self.requests = Counter(
            PREFIX + "delivery_requests", "Batch requests to Segment, by status", ["status"], registry=r
        )
        self.request_seconds = Histogram(
            PREFIX + "delivery_request_duration_seconds",
            "Latency of batch requests to Segment",
            buckets=_FAST,
            registry=r,
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

    def aircall_webhook(self, found: WebhookWatch) -> None:
        self.watch.latest = found

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
