"""Readiness: does the bridge do its job now? One evaluation, for GET /readyz and the console's headline.

/healthz answers whether the process is alive (liveness, and a summary). This answers whether what it stores
also flows: "degraded" with the reasons an operator can act on, or "ready". Every reason is read from the
outbox, the settings, the mappings folder or Aircall's API (which each process asks itself, about the same
account), never from what one process alone has seen, so that with `--workers N` or PostgreSQL replicas every
process gives the same answer, whichever a probe reaches. (One delivery worker's last error is its own:
another may not have tried since. The age of the oldest waiting message is everyone's.)
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from engine.mapping.findings import MappingError, MappingsFolderError
from engine.mapping.load import load_mappings, mapping_files
from engine.outbox import OutboxStats

if TYPE_CHECKING:
    from engine.server.runtime import Runtime

# A dead letter newer than this keeps the answer "degraded": dead letters grow. Long enough for an alert that
# polls every few minutes to see it; the older ones stay in /healthz and the console until replayed or discarded.
DEAD_LETTER_WINDOW_SECONDS = 15 * 60


@dataclass(frozen=True)
class Health:
    reasons: list[str] = field(default_factory=list)  # empty: ready
    first_webhook_awaited: bool = False  # no webhook stored yet: nothing can have failed, nothing has flowed

    @property
    def ready(self) -> bool:
        return not self.reasons

    def as_dict(self) -> dict[str, object]:
        if self.ready:
            return {"status": "ready"}
        return {"status": "degraded", "reasons": self.reasons}


class MappingsOnDisk:
    """Whether the mappings folder as it is now still loads. The server maps with the files it loaded at start-up,
    so a broken edit changes nothing until the next restart, which it would stop: said before that restart.

    Loading costs half a second for the shipped mappings, so the folder is loaded again only when a file's
    name, size or modification time changed (a listing and a stat per file: under a millisecond). The disk is
    the same for every process of a server, so every process says the same."""

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._signature: object = None
        self._problems: list[str] = []

    def signature(self) -> object:
        try:
            return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in mapping_files(self._directory)]
        except (OSError, MappingsFolderError) as exc:
            return str(exc)

    def loaded(self, signature: object) -> None:
        """The folder as `signature` describes it was loaded without a finding (at start-up)."""
        with self._lock:
            self._signature, self._problems = signature, []

    def problems(self) -> list[str]:
        """One line per finding (none: the folder loads). Blocking: call it in a thread."""
        with self._lock:
            signature = self.signature()
            if signature != self._signature:
                self._problems = _load_problems(self._directory)
                self._signature = signature
            return self._problems


def _load_problems(directory: Path) -> list[str]:
    try:
        load_mappings(directory)
    except MappingError as exc:
        return [str(finding).splitlines()[0] for finding in exc.findings]
    except (MappingsFolderError, OSError) as exc:
        return [str(exc)]
    return []


def evaluate(runtime: Runtime, stats: OutboxStats, on_disk: list[str] | None = None) -> Health:
    """The reasons the bridge is degraded, most pressing first. `on_disk`: MappingsOnDisk's problems."""
    settings = runtime.settings
    reasons = []
    watched = runtime.aircall_webhook()  # each process asks Aircall itself: the same account, the same answer
    if watched is not None and watched.problem:  # Aircall sends nothing: nothing below can flow
        reasons.append(watched.problem)
    if on_disk:
        more = f" (and {len(on_disk) - 1} more: `engine validate`)" if len(on_disk) > 1 else ""
        reasons.append(
            f"the mappings on disk do not load; the ones loaded at start-up run on, but a restart would fail: "
            f"{on_disk[0]}{more}"
        )
    if runtime.delivery.client is None:
        if stats.pending:
            reasons.append(
                f"SEGMENT_WRITE_KEY is not set: {stats.pending:,} message(s) wait in the outbox and none is sent"
            )
    elif stats.oldest_pending_age is not None and stats.oldest_pending_age > settings.degraded_delivery_seconds:
        waiting = f"{stats.pending:,} message(s) wait for Segment, the oldest for {_duration(stats.oldest_pending_age)}"
        if stats.last_error:  # kept with a message still waiting: the failure goes on
            reasons.append(f"delivery to Segment keeps failing: {waiting}; its last answer: {stats.last_error}")
        else:
            reasons.append(f"delivery is behind: {waiting}")
    api_configured = bool(settings.aircall_api_id and settings.aircall_api_token)
    if stats.waiting_for_api and not api_configured:
        reasons.append(
            f"{stats.waiting_for_api:,} webhook(s) wait: their mapping reads Aircall's REST API, and "
            "AIRCALL_API_ID and AIRCALL_API_TOKEN are not set"
        )
    if stats.oldest_unprocessed_age is not None and stats.oldest_unprocessed_age > settings.degraded_lag_seconds:
        reasons.append(
            f"processing is behind: {stats.unprocessed:,} webhook(s) wait to be mapped, the oldest for "
            f"{_duration(stats.oldest_unprocessed_age)}"
            + (f" ({stats.waiting_for_api:,} for Aircall's REST API)" if stats.waiting_for_api else "")
        )
    if stats.newest_dead_letter_age is not None and stats.newest_dead_letter_age < DEAD_LETTER_WINDOW_SECONDS:
        reasons.append(
            f"dead letters grow: the newest came {_duration(stats.newest_dead_letter_age)} ago, "
            f"{stats.dead_letters:,} wait for a replay or a discard (`engine outbox status --dead`)"
        )
    return Health(reasons, first_webhook_awaited=stats.newest_webhook_age is None)


async def readiness(runtime: Runtime) -> Health:
    """The evaluation on the runtime's outbox counts (read at most once a second: probes are frequent)."""
    try:
        stats = await runtime.stats()
    except Exception as exc:  # PostgreSQL away, the file gone: nothing flows
        return Health([f"the outbox cannot be read: {exc}"])
    on_disk = await asyncio.to_thread(runtime.mappings_on_disk.problems)
    return evaluate(runtime, stats, on_disk)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
