"""Log lines: one per webhook outcome and per delivery attempt, plain text or JSON (ENGINE_LOG_FORMAT).

Nothing secret is ever passed to a logger: tokens, the write key and Authorization headers stay out of the
messages themselves, so no formatter has to scrub them.
"""

from __future__ import annotations

import json
import logging
import sys
import time

_HANDLER_NAME = "engine-handler"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(log_format: str = "plain", level: str = "INFO") -> None:
    """Attach one handler to the `engine` logger (idempotent: uvicorn's reloads and tests call it again)."""
    logger = logging.getLogger("engine")
    logger.setLevel(level.upper())
    logger.propagate = False
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    logger.addHandler(handler)
