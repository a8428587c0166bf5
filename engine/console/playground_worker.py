"""The playground's checks, in a process of their own (engine.console.playground starts it and kills it when a
check runs past its time limit).

One JSON request a line on standard input, one JSON answer a line on the channel the server reads. Each check
reads the mapping files as texts, the edited text in place of its file's, and runs what `engine validate` runs
on them (engine.mapping.validate.validate_texts: the same loader, compiler and Jinja sandbox as the server),
then renders the given webhook with the mapping for its event, exactly as processing would. Nothing is
written anywhere. Only the files the edited one can affect are read: the bases, the edited file, and every
event file when a base is edited; so a check costs milliseconds, not the whole folder's compile.

The process is limited to MEMORY_BYTES of address space and runs at a lower priority than the server: a
template such as `{{ 'x' * 10**9 }}` fails with MemoryError here, and a runaway computation only delays the
next check until the server kills this process.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, TextIO

MEMORY_BYTES = 1 << 30
PAYLOAD_NAME = "payload.json"
SAMPLES_NAME = "<samples>"  # where findings say the samples are: no folder of that name is read or written


def main() -> int:
    channel = _channel()
    confine()
    for line in sys.stdin.buffer:
        try:
            answer = check(**json.loads(line))
        except MemoryError:
            answer = {"stopped": f"the check needed more than {MEMORY_BYTES >> 20} MB of memory and was stopped"}
        except RecursionError:
            answer = {"stopped": "the check nested too deeply and was stopped"}
        channel.write(json.dumps(answer) + "\n")
        channel.flush()
    return 0


def confine() -> None:
    """This process's limits: MEMORY_BYTES of address space, a lower priority, and JSON by the standard library
    (orjson and msgspec end the process with a segmentation fault when an allocation fails; it raises
    MemoryError)."""
    with contextlib.suppress(ValueError, OSError):  # not every platform has these limits
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    with contextlib.suppress(OSError):
        os.nice(10)
    # Imported after the limits, so that their cost is paid once, before the first check.
    from engine import fastjson
    from engine.mapping import validate  # noqa: F401

    fastjson.stdlib_only()


def _channel() -> TextIO:
    """The answers' own descriptor: whatever a library prints to standard output goes to standard error instead,
    where it cannot be taken for an answer."""
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return channel


def check(
    mappings: str, fixtures: str | None, events: list[str] | None, file: str, text: str, payload: str, shown: str
) -> dict[str, Any]:
    """`file` of the folder `mappings` edited to `text`: findings and the messages `payload` becomes.

    `shown` is how the mappings folder is named to the user (ENGINE_MAPPINGS as set).
    """
    from engine.aircall.envelope import EnvelopeError, parse_webhook
    from engine.mapping.findings import MappingsFolderError
    from engine.mapping.load import inspect_texts, mapping_files
    from engine.mapping.message import RenderError
    from engine.mapping.validate import validate_texts

    started = time.perf_counter()
    source = Path(mappings)
    try:
        on_disk = {path.name: path for path in mapping_files(source)}
    except MappingsFolderError as exc:
        return {"stopped": str(exc)}
    # Named as the user knows them; nothing is written: the texts go to the loader as they are.
    folder, samples = Path(shown), Path(SAMPLES_NAME)
    texts: dict[str, bytes] = {}
    edited_event = _keys_of(text)[0]
    original_events: set[str] = set()
    for name, path in on_disk.items():
        event, _ = _keys_of_file(path)
        if name == file:
            original_events.add(event or "")
            continue
        affected = _extends(name, file, on_disk) or (edited_event is not None and event == edited_event)
        if name.startswith("_") or affected:
            with contextlib.suppress(OSError):  # gone since it was listed: as if it had not been there
                texts[name] = path.read_bytes()
            if event and not name.startswith("_"):
                original_events.add(event)
    texts[file] = text.encode("utf-8", "surrogatepass")  # a lone surrogate: a finding, not a crash
    sample_texts: list[tuple[Path, bytes]] = []
    if fixtures and Path(fixtures).is_dir():
        for path in sorted(Path(fixtures).glob("*.json")):
            with contextlib.suppress(OSError):
                sample_texts.append((samples / path.name, path.read_bytes()))
    sample_texts.append((samples / PAYLOAD_NAME, payload.encode("utf-8", "surrogatepass")))
    # The events whose missing mapping `engine validate` would report: those these files mapped.
    enabled = original_events if events is None else set(events) & original_events
    report = validate_texts(folder, texts, enabled, sample_texts)
    findings = [_finding(f, folder, samples, shown, file) for f in report.findings]

    messages: list[dict[str, Any]] = []
    note = None
    try:
        webhook = parse_webhook(payload.encode("utf-8", "replace"))
    except EnvelopeError:
        webhook = None  # validate reported it, as a finding on the payload
    if webhook is not None:
        mapping = inspect_texts(folder, texts)[0].get(webhook.event)
        if mapping is None:
            note = f"This payload is a {webhook.event} webhook, and no mapping here maps {webhook.event}."
        else:
            try:
                messages = [
                    {
                        "messageId": message_id,
                        "exact": body.decode(),
                        "pretty": json.dumps(json.loads(body), indent=2, ensure_ascii=False),
                        "bytes": len(body),
                    }
                    for message_id, body in mapping.render_json(webhook)
                ]
            except RenderError as exc:
                note = f"No message: {_shown_text(str(exc), folder, samples, shown)}"
    return {
        "findings": findings,
        "messages": messages,
        "note": note,
        "mappings": report.mappings,
        "samples": report.samples,
        "milliseconds": round((time.perf_counter() - started) * 1000, 1),
    }


def _keys_of(text: str) -> tuple[str | None, str | None]:
    """The event a mapping's text maps and the base it extends, read with the engine's own YAML loader (no
    aliases, bounded nesting); None for what it does not say."""
    from engine.mapping import yamlsource

    try:
        document, _ = yamlsource.load(text)
    except Exception:
        return None, None
    if not isinstance(document, dict):
        return None, None
    event, base = document.get("aircall_event"), document.get("extends")
    return (event if isinstance(event, str) else None), (base if isinstance(base, str) else None)


_KEYS: dict[tuple[str, int], tuple[str | None, str | None]] = {}


def _keys_of_file(path: Path) -> tuple[str | None, str | None]:
    try:
        cache_key = (str(path), path.stat().st_mtime_ns)
        if cache_key not in _KEYS:
            _KEYS[cache_key] = _keys_of(path.read_text(encoding="utf-8"))
        return _KEYS[cache_key]
    except (OSError, UnicodeDecodeError):
        return None, None


def _extends(name: str, base: str, on_disk: dict[str, Path]) -> bool:
    """Whether the file `name` extends `base`, directly or through other bases."""
    seen = {name}
    while (name := _keys_of_file(on_disk[name])[1] or "") in on_disk and name not in seen:
        if name == base:
            return True
        seen.add(name)
    return False


def _finding(finding: Any, folder: Path, samples: Path, shown: str, file: str) -> dict[str, Any]:
    path = Path(finding.path)
    if path.parent == folder:
        where, edited = f"{shown}/{path.name}", path.name == file
    elif path.name == PAYLOAD_NAME and path.parent == samples:
        where, edited = "payload", False
    else:
        where, edited = path.name, False
    return {
        "file": where,
        "edited": edited,
        "line": finding.line,
        "column": finding.column,
        "message": _shown_text(finding.message, folder, samples, shown),
        "excerpt": finding.excerpt,
    }


def _shown_text(text: str, folder: Path, samples: Path, shown: str) -> str:
    return text.replace(f"sample {PAYLOAD_NAME}", "the payload").replace(str(folder), shown).replace(str(samples), "")


if __name__ == "__main__":
    sys.exit(main())
