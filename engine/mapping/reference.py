"""`engine events`: every event, the Segment messages its mapping makes and what they carry, read from the
mappings themselves, so that the README's table (made by this) cannot drift from what is sent."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engine.aircall.events import catalogue
from engine.mapping.load import CompiledMapping, Mappings, TemplateField


@dataclass
class Message:
    kind: str  # track, identify, group
    event: str | None  # the Segment event of a track, as written
    each: bool  # one message per element of a list
    inherited: dict[str, list[str]] = field(default_factory=dict)  # base file -> its keys
    own: list[str] = field(default_factory=list)  # keys written in the event's own file


@dataclass
class Row:
    event: str
    family: str
    file: str | None  # None: no mapping, its webhooks are held
    messages: list[Message] = field(default_factory=list)


def reference(mappings: Mappings) -> list[Row]:
    """The catalogue's events in its order, then the other mapped ones by name."""
    rows = []
    known = {event.name for event in catalogue()}
    for event in catalogue():
        rows.append(_row(event.name, event.family, mappings.get(event.name)))
    for name in sorted(mappings.by_event.keys() - known):
        rows.append(_row(name, "not in Aircall's catalogue", mappings.get(name)))
    return rows


def _row(event: str, family: str, mapping: CompiledMapping | None) -> Row:
    if mapping is None:
        return Row(event, family, None)
    document = mapping.document
    specs = [(("segment",), document["segment"]), *((("also", i), s) for i, s in enumerate(document.get("also") or []))]
    messages = []
    for at, spec in specs:
        name = spec.get("event")
        message = Message(spec["type"], name if isinstance(name, str) else None, "each" in spec)
        for template in _fields_of(mapping.fields, at):
            key = str(template.path[len(at) + 1])
            source = template.origin.source.path.name
            if source == mapping.path.name:
                if key not in message.own:
                    message.own.append(key)
            elif key not in message.inherited.setdefault(source, []):
                message.inherited[source].append(key)
        messages.append(message)
    return Row(event, family, mapping.path.name, messages)


def _fields_of(fields: Iterable[TemplateField], at: tuple[object, ...]) -> list[TemplateField]:
    """The properties and traits of one message (its top-level keys: a nested object counts once)."""
    return [f for f in fields if f.path[: len(at)] == at and len(f.path) > len(at) + 1 and f.path[len(at)] in _KEYS]


_KEYS = ("properties", "traits")


def markdown(rows: list[Row], mappings_dir: Path) -> str:
    """Two tables: every event and what it becomes; then the base files and the keys each gives."""
    lines = [
        "| Aircall event | Segment messages | What they carry |",
        "|---|---|---|",
    ]
    bases: dict[str, list[str]] = {}
    for row in rows:
        if row.file is None:
            lines.append(f"| `{row.event}` | none yet: held, unmapped (no `{row.event}.yaml`) | |")
            continue
        sent, carried = [], []
        for message in row.messages:
            what = message.kind if message.event is None else f"{message.kind} {_code(message.event)}"
            sent.append(what + (", one per element of a list" if message.each else ""))
            parts = []
            for base, keys in message.inherited.items():
                known = bases.setdefault(base, [])
                known.extend(k for k in keys if k not in known)
                parts.append(f"`{base}`")
            parts += [_cell(key) for key in message.own]
            label = "traits" if message.kind != "track" else ("per element" if message.each else "")
            text = ", ".join(parts) if parts else "nothing"
            carried.append(f"{label}: {text}" if label else text)
        lines.append(f"| `{row.event}` | {'; '.join(sent)} | {'; '.join(carried)} |")
    lines += ["", "| Base file | What it gives every event that extends it |", "|---|---|"]
    for base in sorted(bases):
        lines.append(f"| `{base}` | {', '.join(_cell(key) for key in bases[base])} |")
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text as one Markdown table cell says it: a '|' would end the cell, a line end the row."""
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if "`" not in text else _cell(text)
