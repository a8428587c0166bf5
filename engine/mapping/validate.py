"""`engine validate`: everything that can be known about the mappings before a webhook arrives.

Beyond loading (schema, YAML, Jinja syntax, names, extends), every mapping is rendered against each sample
webhook for its event and against webhooks stripped of their optional fields, and every message it makes is
checked against Segment's message schema and size limit. Each mapping's time per event is measured on those
webhooks (rendering, finishing and encoding its messages: what the server pays for it, the digest of the data
aside), and the templates that run on Jinja's runtime rather than compiled to Python are noted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jsonschema.exceptions import best_match

from engine.aircall.envelope import EnvelopeError, Webhook, parse_webhook
from engine.aircall.events import resource_of
from engine.mapping.findings import Finding
from engine.mapping.load import CompiledMapping, Mappings, field_finding, inspect_mappings, inspect_texts
from engine.mapping.message import RenderError
from engine.processing.fetch import FetchRefused, fetch_for
from engine.schemas import segment_message_validator

# A mapping slower than this per message it makes gets a note of its own: 20x the shipped ones. Per message, not
# per event: a transcript of 200 utterances is 200 messages, and costs what 200 small webhooks cost.
SLOW_MICROSECONDS = 500


@dataclass
class Timing:
    """What one mapping costs per event, measured on its sample webhooks (or sparse ones, without samples)."""

    path: Path
    event: str
    microseconds: float
    runtime: str  # "python", or "python+jinja" when some templates run on Jinja's runtime
    messages: float = 1.0  # per event, on average over the webhooks timed


@dataclass
class Report:
    directory: Path
    findings: list[Finding] = field(default_factory=list)
    mappings: int = 0
    samples: int = 0
    messages: int = 0
    timings: list[Timing] = field(default_factory=list)
    notes: list[Finding] = field(default_factory=list)  # not problems: templates on Jinja, slow mappings

    @property
    def ok(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        rendered = (  # without samples a mapping is tried on sparse payloads only: say so, not just "0"
            f"from {self.samples} sample webhooks and sparse payloads"
            if self.samples
            else "from sparse payloads only (no sample webhook of these events found: by default they are read "
            "from tests/fixtures beside the folder; --fixtures names another)"
        )
        text = (
            f"{self.directory}: {self.mappings} mappings valid; {self.messages} messages rendered {rendered}, "
            "all valid for Segment"
        )
        if self.timings:
            slowest = max(self.timings, key=lambda t: t.microseconds)
            average = sum(t.microseconds for t in self.timings) / len(self.timings)
            text += (
                f"; {average:.0f} µs per event on average, slowest {slowest.path.name} at {slowest.microseconds:.0f} µs"
            )
        return text


def validate(
    directory: Path, events: Iterable[str] | None, fixtures: Path | None = None, catalogue: Iterable[str] = ()
) -> Report:
    """`events`: the events that must each have a mapping (those AIRCALL_EVENTS lists), or None when it is `all`:
    then the events of Aircall's `catalogue` without a mapping are a note, not a finding (their webhooks are
    stored and held until a mapping for them is added)."""
    directory = Path(directory)
    mappings, findings = inspect_mappings(directory)
    return _validate(directory, mappings, findings, events, _sample_files(fixtures), catalogue)


def validate_texts(
    directory: Path,
    texts: Mapping[str, bytes],
    events: Iterable[str] | None,
    samples: Iterable[tuple[Path, bytes]] = (),
    catalogue: Iterable[str] = (),
) -> Report:
    """validate of mapping files and sample webhooks given as texts (the console's playground: an edited file
    beside the ones on disk), named as the files of `directory` and the paths given: nothing is written."""
    mappings, findings = inspect_texts(Path(directory), texts)
    return _validate(Path(directory), mappings, findings, events, samples, catalogue)


def _validate(
    directory: Path,
    mappings: Mappings,
    findings: list[Finding],
    events: Iterable[str] | None,
    samples: Iterable[tuple[Path, bytes | OSError]],
    catalogue: Iterable[str],
) -> Report:
    report = Report(directory, findings, mappings=len(mappings))
    for event in sorted(set(events or ()) - mappings.claimed):
        report.findings.append(
            Finding(
                directory / f"{event}.yaml",
                1,
                1,
                f"no mapping for enabled event {event!r} (AIRCALL_EVENTS): its webhooks would be held unmapped; "
                "add the file, or leave the event out of AIRCALL_EVENTS",
            )
        )
    unmapped = sorted(set(catalogue) - mappings.claimed) if events is None else []
    if unmapped:
        shown = ", ".join(unmapped[:5]) + (f" and {len(unmapped) - 5} more" if len(unmapped) > 5 else "")
        report.notes.append(
            Finding(
                directory,
                0,
                0,
                f"note: {len(unmapped)} of Aircall's events have no mapping here ({shown}); with AIRCALL_EVENTS=all "
                "their webhooks are stored and held, unmapped, until a mapping for them is added",
            )
        )
    timed: dict[str, list[Webhook]] = {}
    for path, webhook in _samples(samples, report):
        mapping = mappings.get(webhook.event)
        if mapping is not None:
            report.samples += 1
            _check_render(mapping, webhook, f"sample {path.name}", report)
            timed.setdefault(webhook.event, []).append(webhook)
    for mapping in mappings.by_event.values():
        for label, webhook in _sparse_webhooks(mapping.event):
            _check_render(mapping, webhook, label, report)
        _note_jinja(mapping, report)
        webhooks = timed.get(mapping.event) or [w for _, w in _sparse_webhooks(mapping.event)]
        _time(mapping, webhooks, report)
    report.findings = list(dict.fromkeys(report.findings))
    return report


def _note_jinja(mapping: CompiledMapping, report: Report) -> None:
    for template, fallback in mapping.on_jinja:
        report.notes.append(
            field_finding(
                template.origin,
                f"note: runs on Jinja's runtime, not compiled to Python ({fallback.reason}); it renders the same, "
                "more slowly",
                fallback.lineno,
            )
        )


def _time(mapping: CompiledMapping, webhooks: list[Webhook], report: Report, budget: float = 0.003) -> None:
    """The mapping's time per event: the best of three rounds over its webhooks, within about `budget` seconds."""
    try:
        for webhook in webhooks:
            mapping.render_json(webhook)  # warm, and the digest of the data computed once, outside the timing
    except RenderError:
        return  # reported above
    best = float("inf")
    for _ in range(3):
        count, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < budget / 3 or count == 0:
            for webhook in webhooks:
                mapping.render_json(webhook)
            count += len(webhooks)
        best = min(best, elapsed / count)
    microseconds = best * 1e6
    runtime = "python+jinja" if mapping.on_jinja else "python"
    messages = sum(len(mapping.render_json(webhook)) for webhook in webhooks) / len(webhooks)
    report.timings.append(Timing(mapping.path, mapping.event, microseconds, runtime, messages))
    per_message = microseconds / max(messages, 1)
    if per_message > SLOW_MICROSECONDS:
        report.notes.append(
            Finding(
                mapping.path,
                1,
                1,
                f"note: {per_message:,.0f} µs per message: a slow mapping (the shipped ones take under 25); "
                "the server maps fewer webhooks a second",
            )
        )


def _sample_files(fixtures: Path | None) -> Iterable[tuple[Path, bytes | OSError]]:
    if fixtures is None or not fixtures.is_dir():
        return
    for path in sorted(fixtures.glob("*.json")):
        try:
            yield path, path.read_bytes()
        except OSError as exc:  # a folder named *.json, a file that cannot be read
            yield path, exc


def _samples(samples: Iterable[tuple[Path, bytes | OSError]], report: Report) -> Iterable[tuple[Path, Webhook]]:
    for path, content in samples:
        if isinstance(content, OSError):
            report.findings.append(Finding(path, 1, 1, f"cannot read this sample: {content.strerror}"))
            continue
        try:
            yield path, parse_webhook(content)
        except EnvelopeError as exc:
            report.findings.append(Finding(path, 1, 1, str(exc)))


def _sparse_webhooks(event: str) -> Iterable[tuple[str, Webhook]]:
    """Webhooks with nothing but an id, or nothing at all: real payloads leave fields out."""
    for data in ({"id": 1}, {}):
        label = f"a webhook whose data is {data} (optional fields missing must render as null)"
        yield label, Webhook(resource_of(event), event, 1_700_000_000, "sample", data)


class _NoNetwork:
    """What validate fetches with: nothing (the paths are checked, not read)."""

    def get(self, path: str) -> dict[str, object]:
        return {}


def _check_render(mapping: CompiledMapping, webhook: Webhook, label: str, report: Report) -> None:
    try:
        fetch_for(mapping, webhook, _NoNetwork())
    except FetchRefused as exc:
        report.findings.append(_mapping_finding(mapping, f"fails on {label}: {exc}"))
        return
    try:
        encoded = mapping.render_json(webhook)
    except RenderError as exc:
        located = [
            field_finding(t.origin, f"fails on {label}: {type(e).__name__}: {e}", line)
            for t, e, line in mapping.failing_fields(webhook)
        ]
        report.findings.extend(located or [_mapping_finding(mapping, f"fails on {label}: {exc}")])
        return
    for _, body in encoded:
        message = json.loads(body)
        report.messages += 1
        error = best_match(segment_message_validator().iter_errors(message))
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "message"
            report.findings.append(
                _mapping_finding(
                    mapping, f"{message['type']} message on {label} is not valid for Segment: {where}: {error.message}"
                )
            )


def _mapping_finding(mapping: CompiledMapping, message: str) -> Finding:
    return Finding(mapping.path, 1, 1, message)


def find_fixtures(mappings_dir: Path) -> Path | None:
    """Sample webhooks: tests/fixtures beside the mappings folder, where the project keeps them."""
    candidate = Path(mappings_dir).parent / "tests" / "fixtures"
    return candidate if candidate.is_dir() else None
