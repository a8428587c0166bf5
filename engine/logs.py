"""Log lines: one per webhook outcome and per delivery attempt, plain text or JSON (ENGINE_LOG_FORMAT).

A line's data (the event, the outcome, a status, a count, milliseconds) is passed as fields, never formatted
into the message: `log.info("webhook", extra={"fields": {"event": event, "status": 200, ...}})`. In JSON each
field is a key of the line's object, with its JSON type (a number stays a number), so that a log tool can
query `outcome` or sum `ms`; in plain text they follow the message as `key=value`, quoted when a value has a
space, a quote or a line break (logfmt), so a plain line reads as one line whatever a value holds.
The names are shared by every stage: event, outcome, status, reason, error, webhook_key, webhook_id,
message_id, messages, webhooks, ms, client.

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
import math
import queue
import sys
import time
from logging.handlers import QueueHandler, QueueListener
from typing import Any

_PLAIN = "%(asctime)s %(levelname)s %(name)s %(message)s"
QUEUED_LINES = 5000  # lines waiting for a slow stderr: a few seconds of a busy server, about a megabyte


def _json_value(value: object) -> object:
    """A field's value as JSON can hold it: numbers, booleans, strings and None as they are, lists and objects
    of them, anything else as its text (an exception, a path)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # NaN is not JSON
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_value(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _json_value(item) for key, item in value.items()}
    return str(value)


def _fields(record: logging.LogRecord) -> dict[str, object]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _plain_value(value: object) -> str:
    value = _json_value(value)
    if value is None:
        return "-"
    if isinstance(value, str):
        if value and value.isprintable() and not any(c in value for c in ' "=\\'):
            return value
        return json.dumps(value, ensure_ascii=False)  # quoted, line breaks escaped: the line stays one line
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))  # true, 12, 1.5, [3,4]


class PlainFormatter(logging.Formatter):
    """`time LEVEL logger message key=value ...`."""

    def __init__(self) -> None:
        super().__init__(_PLAIN)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        fields = _fields(record)
        if not fields:
            return line
        return line + " " + " ".join(f"{name}={_plain_value(value)}" for name, value in fields.items())


class JsonFormatter(logging.Formatter):
    """One object a line: time, level, logger, message, then each field as a key of its own."""

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in _fields(record).items():
            # A field never replaces the line's own keys: every log tool finds the time and the level there.
            line.setdefault(name, _json_value(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False)


class _HandOff(QueueHandler):
    """Queues the record with its message and traceback rendered to text (the objects they refer to may change
    or be gone by the time the writer runs), and leaves the rest of the formatting to its writer thread.

    When the queue is full (stderr has not been read for a while), lines are dropped and counted rather than
    held in memory without end; the count is logged once there is room again.
    """

    def __init__(self) -> None:
        super().__init__(queue.Queue(maxsize=QUEUED_LINES))
        self.writer = logging.StreamHandler(sys.stderr)
        # Not named `listener`: Python 3.12's QueueHandler.close() stops a thread of that name, and logging
        # closes every handler at exit and whenever uvicorn applies its logging config.
        self.writer_thread: QueueListener | None = QueueListener(self.queue, self.writer)
        self.writer_thread.start()
        self.dropped = 0

    def enqueue(self, record: logging.LogRecord) -> None:
        if self.writer_thread is None:  # the last moments of the process: write in place
            self.writer.handle(record)
            return
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
        if _fields(record):
            # A copy of what the fields hold now: a list or an object they name may change meanwhile.
            record.fields = {name: _json_value(value) for name, value in _fields(record).items()}
        if record.exc_info:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_info = None
        return record

    def write_directly(self) -> None:
        if self.writer_thread is not None:
            self.writer_thread.stop()  # the queued lines first, in order
            self.writer_thread = None


_handoff: _HandOff | None = None  # one per process


def _dropped_record(count: int) -> logging.LogRecord:
    record = logging.LogRecord(
        "engine.logs", logging.WARNING, __file__, 0, "log lines dropped: stderr was not being read", None, None
    )
    record.fields = {"dropped": count}
    return record


def handoff_handler(log_format: str = "plain") -> logging.Handler:
    """This process's one log handler: a bounded queue in front, a thread writing to stderr in `log_format`.

    Also the factory that `engine serve`'s uvicorn logging config names, so that uvicorn's own lines (start-up,
    protocol errors) go the same way and in the same format as the engine's.
    """
    global _handoff
    if _handoff is None:
        _handoff = _HandOff()
    _handoff.writer.setFormatter(JsonFormatter() if log_format == "json" else PlainFormatter())
    return _handoff


def configure(log_format: str = "plain", level: str = "INFO") -> None:
    """Send the `engine` loggers' lines to the handler (idempotent: uvicorn's reloads and tests call it again)."""
    logger = logging.getLogger("engine")
    logger.setLevel(level.upper())
    logger.propagate = False
    handler = handoff_handler(log_format)
    if handler not in logger.handlers:
        logger.addHandler(handler)


def uvicorn_log_config(log_format: str) -> dict[str, Any]:
    """For uvicorn.run(log_config=...): uvicorn's lines through the same handler; no access log (the webhook's
    own line says more, and the proxy in front keeps one)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"engine": {"()": f"{__name__}.handoff_handler", "log_format": log_format}},
        "loggers": {
            "uvicorn": {"handlers": ["engine"], "level": "INFO", "propagate": False},
            "uvicorn.error": {"level": "INFO"},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
        },
    }


def write_directly() -> None:
    """Write out what is queued, stop the writer thread, and from then on write each line in place.

    For the server's last moments: uvicorn ends the process by raising SIGTERM again once it has shut down,
    which runs no atexit handler, so whatever was still queued would be lost.
    """
    if _handoff is not None:
        _handoff.write_directly()


atexit.register(write_directly)
