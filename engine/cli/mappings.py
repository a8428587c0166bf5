"""`engine validate`, `engine render` and `engine events`: the mappings checked, one webhook's messages printed,
or what every event becomes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.aircall.envelope import EnvelopeError, parse_webhook
from engine.aircall.events import known_events
from engine.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    UsageError,
    mappings_or_findings,
    settings_for,
)
from engine.mapping.load import load_mappings
from engine.mapping.message import RenderError
from engine.mapping.reference import markdown, reference
from engine.mapping.validate import find_fixtures, validate


def add_commands(commands: argparse._SubParsersAction) -> None:
    check = commands.add_parser("validate", help="check every mapping file; exit 1 on any finding")
    check.add_argument("directory", nargs="?", type=Path, help="mappings folder (default ENGINE_MAPPINGS or mappings/)")
    check.add_argument("--fixtures", type=Path, help="sample webhooks to render (default tests/fixtures beside it)")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.set_defaults(run=_validate)

    render = commands.add_parser("render", help="print the Segment messages one webhook would produce")
    render.add_argument("payload", help="a webhook body as Aircall POSTs it, or - for standard input")
    render.add_argument("--mappings", type=Path, help="mappings folder (default ENGINE_MAPPINGS or mappings/)")
    render.set_defaults(run=_render)

    events = commands.add_parser(
        "events", help="every Aircall event, the Segment messages its mapping makes and what they carry"
    )
    events.add_argument("--mappings", type=Path, help="mappings folder (default ENGINE_MAPPINGS or mappings/)")
    events.set_defaults(run=_events)


def _validate(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    directory = args.directory or settings.mappings_dir
    fixtures = args.fixtures if args.fixtures is not None else find_fixtures(directory)
    if args.fixtures is not None and not args.fixtures.is_dir():
        raise UsageError(f"--fixtures: {args.fixtures} is not a folder")
    report = validate(directory, settings.events.listed, fixtures, known_events())
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "mappings": report.mappings,
                    "samples": report.samples,
                    "messages": report.messages,
                    "findings": [f.as_dict() for f in report.findings],
                    "notes": [f.as_dict() for f in report.notes],
                    "timings": [
                        {
                            "file": str(t.path),
                            "event": t.event,
                            "us_per_event": round(t.microseconds, 1),
                            "messages_per_event": round(t.messages, 2),
                            "runtime": t.runtime,
                        }
                        for t in report.timings
                    ],
                },
                indent=2,
            )
        )
    elif report.ok:
        for note in report.notes:
            print(note)
        print(report.summary())
    else:
        for finding in report.findings:
            print(finding)
        for note in report.notes:
            print(note)
        print(f"{len(report.findings)} problem(s) in {directory}", file=sys.stderr)
    return EXIT_OK if report.ok else EXIT_FINDINGS


def _events(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    directory = args.mappings or settings.mappings_dir
    mappings = mappings_or_findings(lambda: load_mappings(directory))
    if mappings is None:
        return EXIT_FINDINGS
    sys.stdout.write(markdown(reference(mappings), directory))
    return EXIT_OK


def _render(args: argparse.Namespace) -> int:
    settings = settings_for(args)
    directory = args.mappings or settings.mappings_dir
    body = _read_payload(args.payload)
    try:
        webhook = parse_webhook(body)
    except EnvelopeError as exc:
        raise UsageError(f"{args.payload}: {exc}") from None
    mappings = mappings_or_findings(lambda: load_mappings(directory))
    if mappings is None:
        return EXIT_FINDINGS
    mapping = mappings.get(webhook.event)
    if mapping is None:
        raise UsageError(f"{args.payload}: no mapping for event {webhook.event!r} in {directory}")
    try:
        messages = [json.loads(encoded.body) for encoded in mapping.render_json(webhook)]
    except RenderError as exc:
        print(f"engine: cannot render {args.payload}: {exc}", file=sys.stderr)
        return EXIT_FINDINGS
    print(json.dumps(messages, indent=2, ensure_ascii=False))
    return EXIT_OK


def _read_payload(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {exc.strerror}") from None
