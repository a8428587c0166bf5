"""Prometheus metrics, in a registry of the app's own (no process-wide globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from engine.outbox import OutboxStats
from engine.segment import Answer

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
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
        self.enqueued = Counter("segment_messages_enqueued", "Messages newly stored in the outbox", registry=r)
        self.delivered = Counter("segment_messages_delivered", "Messages Segment accepted", registry=r)
        self.retried = Counter("segment_messages_retried", "Messages scheduled for another attempt", registry=r)
        self.dead = Counter("segment_messages_dead_lettered", "Messages moved to the dead letters", registry=r)
        self.requests = Counter("segment_requests", "Batch requests to Segment, by status", ["status"], registry=r)
        self.request_seconds = Histogram(
            "segment_request_seconds", "Latency of batch requests to Segment", buckets=_FAST, registry=r
        )
        self.pending = Gauge("outbox_pending_messages", "Messages waiting for delivery", registry=r)
        self.oldest = Gauge("outbox_oldest_pending_age_seconds", "Age of the oldest waiting message", registry=r)
        self.dead_letters = Gauge("outbox_dead_letters", "Dead letters not yet replayed", registry=r)

    def webhook(self, event: str, outcome: str, seconds: float) -> None:
        self.webhooks.labels(event, outcome).inc()
        self.webhook_seconds.observe(seconds)

    def committed(self, webhooks: int, messages: int) -> None:
        self.commit_webhooks.observe(webhooks)
        self.enqueued.inc(messages)

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
        self.pending.set(stats.pending)
        self.oldest.set(stats.oldest_pending_age or 0.0)
        self.dead_letters.set(stats.dead_letters)

    def render(self) -> bytes:
        return generate_latest(self.registry)
