"""A small HTTP/1.1 load client on asyncio streams: keep-alive connections, closed or paced load, latencies.

Written for the benchmarks here (no load tool to install): it only speaks what our servers answer, a
Content-Length body on a kept-alive connection.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class LoadResult:
    requests: int
    seconds: float
    latencies: list[float]  # seconds
    statuses: dict[int, int]

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(int(len(ordered) * p / 100), len(ordered) - 1)]

    def summary(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "rate": round(self.rate, 1),
            "p50_ms": round(self.percentile(50) * 1000, 2),
            "p99_ms": round(self.percentile(99) * 1000, 2),
            "mean_ms": round(statistics.fmean(self.latencies) * 1000, 2),
        }


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, body: bytes) -> int:
    writer.write(head + body)
    await writer.drain()
    status_line = await reader.readline()
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return int(status_line.split()[1])


async def run_load(
    host: str,
    port: int,
    path: str,
    bodies: Callable[[int], bytes],
    total: int,
    concurrency: int = 32,
    rate: float | None = None,
) -> LoadResult:
    """POST `total` bodies over `concurrency` connections; with `rate`, paced to that many per second."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(total))
    started = time.perf_counter()

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n in counter:
                if rate is not None:  # open-ish loop: request n is due at n / rate
                    delay = started + n / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                body = bodies(n)
                head = (
                    f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(body)}\r\n\r\n"
                ).encode()
                sent = time.perf_counter()
                status = await _request(reader, writer, head, body)
                latencies.append(time.perf_counter() - sent)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return LoadResult(len(latencies), time.perf_counter() - started, latencies, statuses)
