"""The playground: a mapping edited in the browser, checked and rendered by the engine itself, under a time limit.

The checks run in a child process (engine.console.playground_worker), started on first use and kept warm. A
check that has not answered within LIMIT_SECONDS is stopped by killing the child; the next check starts a new
one. So a template that would run for ever, or eat the memory, costs the server nothing but that child. One
check at a time per server process: the console is for a few people, and a runaway cannot multiply.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from engine.config import Settings
from engine.mapping.validate import find_fixtures

LIMIT_SECONDS = 3.0
MAX_TEXT = 256 * 1024  # a mapping file in the editor
MAX_PAYLOAD = 1024 * 1024  # as ENGINE_MAX_BODY_BYTES' default
FILE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,204}\.ya?ml")  # an event's name is 200 characters at most
# What the child needs of the server's environment to start Python; none of the settings (and so none of the
# secrets) is passed on.
_KEPT_ENVIRONMENT = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "HOME")


class PlaygroundRefused(ValueError):
    """A request the playground does not run (a file name that is not a mapping's, a text too large)."""


class Playground:
    def __init__(self) -> None:
        self._child: asyncio.subprocess.Process | None = None
        self._scratch: str | None = None  # the child's temporary folder (its TMPDIR), removed with the child
        self._lock = asyncio.Lock()

    async def warm(self) -> None:
        """Start the child ahead of the first check (the playground page calls this)."""
        async with self._lock:
            await self._running()

    async def check(self, settings: Settings, file: str, text: str, payload: str) -> dict[str, Any]:
        if not FILE_NAME.fullmatch(file):
            raise PlaygroundRefused("the file must be a mapping's name, like call.ended.yaml")
        if len(text) > MAX_TEXT or len(payload) > MAX_PAYLOAD:
            raise PlaygroundRefused("the mapping or the payload is too large for the playground")
        request = {
            "mappings": str(settings.mappings_dir.resolve()),
            "fixtures": str(fixtures) if (fixtures := find_fixtures(settings.mappings_dir.resolve())) else None,
            "events": None if settings.events.everything else sorted(settings.events.listed or ()),
            "file": file,
            "text": text,
            "payload": payload,
            "shown": str(settings.mappings_dir).rstrip("/") or ".",
        }
        async with self._lock:
            child = await self._running()
            assert child.stdin is not None and child.stdout is not None
            try:
                child.stdin.write(json.dumps(request).encode() + b"\n")
                await child.stdin.drain()
                async with asyncio.timeout(LIMIT_SECONDS):
                    line = await child.stdout.readline()
            except TimeoutError:
                await self._kill()
                return {"stopped": f"the check took longer than {LIMIT_SECONDS:g} s and was stopped"}
            except (ConnectionError, ValueError):  # the child died, or its answer overran the reader's limit
                line = b""
            if not line:
                await self._kill()
                return {"stopped": "the check ended abnormally (out of memory?) and was stopped"}
            return json.loads(line)

    async def _running(self) -> asyncio.subprocess.Process:
        if self._child is None or self._child.returncode is not None:
            environment = {name: os.environ[name] for name in _KEPT_ENVIRONMENT if name in os.environ}
            # A child killed for time or memory cannot clean up after itself: the folders it makes go in one
            # of the server's, removed when the child is.
            self._scratch = tempfile.mkdtemp(prefix="console-playground-")
            self._child = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "engine.console.playground_worker",
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env=environment | {"PYTHONUNBUFFERED": "1", "TMPDIR": self._scratch}, cwd=Path.cwd(),
                limit=16 * 1024 * 1024,
            )  # fmt: skip
        return self._child

    async def _kill(self) -> None:
        child, self._child = self._child, None
        scratch, self._scratch = self._scratch, None
        if child is not None and child.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await child.wait()
        if scratch is not None:
            await asyncio.to_thread(shutil.rmtree, scratch, True)

    async def close(self) -> None:
        async with self._lock:
            await self._kill()
