"""The processing stage in a process of its own, started and stopped by the server's lifespan.

Mapping is CPU work; in the server's process it would take the event loop's core (and the GIL) from the
webhooks arriving. In a child process it runs on another core, and the gateway answers at the speed of a
durable append. One child per server process (`--workers N` gives N, sharing the outbox through leases).

The two talk over a socket pair, in bytes: the server writes b"w" when it has stored a webhook (a wake-up;
dropped when the socket is full, since the child then has wake-ups waiting anyway), the child writes one line
`mapped dead new_messages` per committed batch (metrics, and the delivery's wake-up). When the server goes
away, even by SIGKILL, the child reads end-of-file and stops, so it never outlives its server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable

from engine import logs
from engine.config import Settings
from engine.mapping.findings import MappingError
from engine.processing.fetch import processing_fetcher

log = logging.getLogger("engine.processing")

STOP_SECONDS = 10.0  # a batch in hand is committed before the child exits; it is given this long
RESTART_SECONDS = 1.0  # after a child died on its own


class ProcessingProcess:
    """The server's handle on its processing child."""

    def __init__(
        self, settings: Settings, mappings: dict[str, bytes], on_report: Callable[[int, int, int], None]
    ) -> None:
        """`settings` and `mappings` (the mapping files' names and bytes) are what the server checked at start-up:
        the child maps with exactly those, whatever the environment, .env or mappings folder say by the time it
        starts or restarts. `on_report(mapped, dead, new_messages)` runs on the event loop after each batch."""
        self._handoff = pickle.dumps((settings, mappings))
        self._on_report = on_report
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending = b""
        self._stopping = False
        self.restarts = 0

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        args = [sys.executable, "-m", "engine.processing.child", "--fd", str(theirs.fileno())]
        self._proc = subprocess.Popen(args, pass_fds=[theirs.fileno()], stdin=subprocess.PIPE)
        theirs.close()
        # From a thread: past the pipe's 64 KB (many mapping files), the write waits for the child to read, and
        # the event loop must not.
        threading.Thread(target=_hand_over, args=(self._proc, self._handoff), name="processing-handoff").start()
        self._sock = ours
        asyncio.get_running_loop().add_reader(ours.fileno(), self._read)

    def wake(self) -> None:
        """Tell the processing process that webhooks are waiting. Called from the committer's thread."""
        sock = self._sock  # read once: the event loop may close and drop it meanwhile (a restart)
        if sock is not None:
            with contextlib.suppress(OSError):  # full (it is woken already) or closed (a new one is starting)
                sock.send(b"w")

    def _read(self) -> None:
        assert self._sock is not None
        try:
            data = self._sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the child exited: killed (out of memory?) or crashed; stored webhooks wait meanwhile
            loop = asyncio.get_running_loop()
            loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
            code = self._proc.wait() if self._proc is not None else None
            if not self._stopping:
                log.error(
                    "the processing process exited; starting another",
                    extra={"fields": {"exit_code": code, "restart_seconds": RESTART_SECONDS}},
                )
                self.restarts += 1
                loop.call_later(RESTART_SECONDS, self._restart)
            return
        lines = (self._pending + data).split(b"\n")
        self._pending = lines.pop()
        for line in lines:
            mapped, dead, added = (int(part) for part in line.split())
            self._on_report(mapped, dead, added)

    def _restart(self) -> None:
        if not self._stopping:
            self.start()

    async def stop(self) -> None:
        """End-of-file tells the child to stop after the batch in hand; SIGKILL if it does not in time."""
        self._stopping = True
        if self._sock is not None:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                await asyncio.to_thread(self._proc.wait, STOP_SECONDS)
            except subprocess.TimeoutExpired:
                log.error(
                    "the processing process did not stop in time; killed", extra={"fields": {"seconds": STOP_SECONDS}}
                )
                self._proc.kill()
                await asyncio.to_thread(self._proc.wait)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


def _hand_over(proc: subprocess.Popen[bytes], handoff: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, OSError):  # it died at once: its end-of-file restarts it
        proc.stdin.write(handoff)
        proc.stdin.close()


class SocketChannel:
    """The child's end of the socket pair (engine.processing.worker.Channel)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._closed = False

    def wait(self, seconds: float) -> bool:
        self._sock.settimeout(seconds)
        try:
            data = self._sock.recv(65536)  # every wake-up waiting, in one read
        except TimeoutError:
            return True
        except OSError:
            data = b""
        self._closed = self._closed or not data
        return not self._closed

    def stopping(self) -> bool:
        """Checked between batches without waiting: the server has gone (end-of-file)."""
        if self._closed:
            return True
        self._sock.setblocking(False)
        try:
            while True:
                data = self._sock.recv(65536)
                if not data:
                    self._closed = True
                    break
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            self._closed = True
        return self._closed

    def report(self, mapped: int, dead: int, new_messages: int) -> None:
        self._sock.setblocking(True)
        with contextlib.suppress(OSError):  # the server has gone; the next check stops the loop
            self._sock.sendall(f"{mapped} {dead} {new_messages}\n".encode())


PROCESSING_NICENESS = 10  # Linux: a weight of 110 against the gateway's 1024 when both want the same core


def main(argv: list[str] | None = None) -> int:
    from engine.mapping.load import load_texts
    from engine.outbox import open_outbox
    from engine.processing.worker import ProcessingPolicy, work

    parser = argparse.ArgumentParser(prog="engine-processing")
    parser.add_argument("--fd", type=int, required=True)
    args = parser.parse_args(argv)
    sock = socket.socket(fileno=args.fd)
    # The server decides when to stop (end-of-file): a Ctrl-C or SIGTERM sent to the whole process group
    # must not cut a batch short here.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Below the gateway's priority: during a burst the CPU goes to answering Aircall (what must not fail), and
    # mapping catches up after it; a lag of seconds costs nothing, a slow answer makes Aircall retry.
    with contextlib.suppress(OSError):
        os.nice(PROCESSING_NICENESS)
    # The settings and mapping files the server checked, from the server itself (see ProcessingProcess).
    settings, files = pickle.loads(sys.stdin.buffer.read())
    logs.configure(settings.log_format, settings.log_level)
    try:
        mappings = load_texts(settings.mappings_dir, files)
        # Not synced: a commit of this stage that a power cut loses (messages and the processed mark, together)
        # leaves its webhooks unprocessed, and they map again to the same messageIds. The gateway's commits of
        # the webhooks themselves stay synced; this saves two flushes a batch, which the gateway would wait for.
        outbox = open_outbox(settings.db, synced=False)
    except (MappingError, OSError, ValueError) as exc:  # the server loaded the same before us: an outbox gone?
        log.error("processing cannot start", extra={"fields": {"error": str(exc)}})
        return 2
    try:
        policy = ProcessingPolicy(lease_seconds=settings.lease_seconds)
        work(outbox, mappings, policy, SocketChannel(sock), processing_fetcher(settings))
    finally:
        outbox.close()
        logs.write_directly()
    return 0


if __name__ == "__main__":
    sys.exit(main())
