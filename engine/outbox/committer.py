"""Group commit: one thread owns the outbox; webhooks that arrive while a commit is under way share the next one.

SQLite makes one commit durable with an fsync, which takes milliseconds on a real disk. Committing each webhook
on its own would cap the server at a few hundred webhooks a second; here every webhook waiting when the thread
comes round goes into one transaction, and each still hears 200 only after its own row is on disk.
Every other outbox operation (claims, acks, stats) runs on the same thread, in order, so the process has a
single writer and never waits on its own lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from engine.outbox import Outbox, StoredWebhook

T = TypeVar("T")

MAX_GROUP = 512  # webhooks in one transaction at most: keeps one commit's latency bounded


@dataclass
class _Append:
    webhook: StoredWebhook
    future: asyncio.Future[bool]
    loop: asyncio.AbstractEventLoop


@dataclass
class _Call:
    function: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop
    kwargs: dict[str, Any] = field(default_factory=dict)


_STOP = object()


class Committer:
    def __init__(self, outbox: Outbox, on_commit: Callable[[int], None] | None = None) -> None:
        """`on_commit(webhooks)` is called on the thread after each group commit (metrics)."""
        self.outbox = outbox
        self._jobs: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="outbox-committer", daemon=True)
        self._on_commit = on_commit

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Finish what is queued, then close the outbox."""
        if self._thread.is_alive():
            self._jobs.put(_STOP)
            self._thread.join()
        self.outbox.close()

    async def append(self, webhook: StoredWebhook) -> bool:
        """Store a raw webhook; returns, once it is committed, whether it was new (not a redelivery).

        Raises OutboxUnavailable when the store cannot take the write.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bool] = loop.create_future()
        self._jobs.put(_Append(webhook, future, loop))
        return await future

    async def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run `function(*args)` (an outbox method) on the committer thread, in order with the writes."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put(_Call(function, args, future, loop, kwargs))
        return await future

    # -- the thread ------------------------------------------------------------------------------------------

    def _run(self) -> None:
        stopping = False
        while not stopping:
            job = self._jobs.get()
            if job is _STOP:
                break
            group: list[_Append] = []
            others: list[_Call] = []
            self._sort(job, group, others)
            while len(group) < MAX_GROUP:
                try:
                    more = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    stopping = True
                    break
                self._sort(more, group, others)
            if group:
                self._commit(group)
            for call in others:
                self._call(call)

    @staticmethod
    def _sort(job: object, group: list[_Append], others: list[_Call]) -> None:
        if isinstance(job, _Append):
            group.append(job)
        else:
            others.append(job)  # type: ignore[arg-type]

    def _commit(self, group: list[_Append]) -> None:
        try:
            added: list[Any] = self.outbox.append([job.webhook for job in group])
            error: BaseException | None = None
        except Exception as exc:
            added, error = [None] * len(group), exc
        if error is None and self._on_commit is not None:
            self._on_commit(len(group))
        # One hand-over per event loop for the whole group rather than one per webhook: each is a wake-up of
        # the loop and a turn of the GIL between this thread and it.
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for job, result in zip(group, added, strict=True):
            by_loop.setdefault(job.loop, []).append((job.future, result))
        for loop, settled in by_loop.items():
            _hand_over(loop, settled, error)

    @staticmethod
    def _call(call: _Call) -> None:
        try:
            result = call.function(*call.args, **call.kwargs)
        except Exception as exc:
            _hand_over(call.loop, [(call.future, None)], exc)
        else:
            _hand_over(call.loop, [(call.future, result)], None)


def _hand_over(
    loop: asyncio.AbstractEventLoop, settled: list[tuple[asyncio.Future[Any], Any]], error: BaseException | None
) -> None:
    """Settle the futures on their event loop's thread, in one turn of it."""
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
        loop.call_soon_threadsafe(_settle_all, settled, error)


def _settle_all(settled: list[tuple[asyncio.Future[Any], Any]], error: BaseException | None) -> None:
    for future, result in settled:
        if future.done():  # the request went away (client disconnected); its rows are committed all the same
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
