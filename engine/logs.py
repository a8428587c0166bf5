"""Log lines: one per webhook outcome and per delivery attempt, plain text or JSON (ENGINE_LOG_FORMAT).

Nothing secret is ever passed to a logger: tokens, the write key and Authorization headers stay out of the
messages themselves, so no formatter has to scrub them.

The event loop only hands each record to a queue; a thread formats and writes it. A write to stderr blocks
when its reader is slow (journald under load, a full pipe), and the event loop must not wait on that.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import queue
import sys
import time
from logging.handlers import QueueHandler, QueueListener

_HANDLER_NAME = "engine-handler"
QUEUED_LINES = 5000  # lines waiting for a slow stderr: a few seconds of a busy server, about a megabyte
_listener: QueueListener | None = None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


class _HandOff(QueueHandler):
    """Queues the record with its message and traceback rendered to text (the objects they refer to may change
    or be gone by the time the writer runs), and leaves the rest of the formatting to the writer thread.

    When the queue is full (stderr has not been read for a while), lines are dropped and counted rather than
    held in memory without end; the count is logged once there is room again.
    """

    def __init__(self, records: queue.Queue[logging.LogRecord]) -> None:
        super().__init__(records)
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        try:
            if self.dropped:
                self.queue.put_nowait(self.prepare(_dropped_record(self.dropped)))
                self.dropped = 0
            self.queue.put_nowait(record)
        except queue.Full:
            self.dropped += 1

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        record = copy.copy(record)
        record.msg, record.args = record.getMessage(), None
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record


def _dropped_record(count: int) -> logging.LogRecord:
    return logging.LogRecord(
        "engine.logs", logging.WARNING, __file__, 0, "%d log lines dropped: stderr was not being read", (count,), None
    )


def configure(log_format: str = "plain", level: str = "INFO") -> None:
    """Attach one handler to the `engine` logger (idempotent: uvicorn's reloads and tests call it again)."""
    global _listener
    logger = logging.getLogger("engine")
    logger.setLevel(level.upper())
    logger.propagate = False
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
    _stop_writer()
    writer = logging.StreamHandler(sys.stderr)
    writer.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    records: queue.Queue[logging.LogRecord] = queue.Queue(maxsize=QUEUED_LINES)
    _listener = QueueListener(records, writer)
    _listener.start()
    handler = _HandOff(records)
    handler.set_name(_HANDLER_NAME)
    logger.addHandler(handler)


def _stop_writer() -> None:
    """Write out what is queued, then stop the writer thread."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


atexit.register(_stop_writer)
