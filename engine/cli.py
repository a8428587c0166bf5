"""The `engine` command. It parses arguments and prints; the work is done by the modules it calls."""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from engine import __version__, logs, metrics
from engine.aircall_api import AircallClient, AircallError
from engine.backfill import RESOURCES, Progress, backfill, parse_date
from engine.backfill import now as backfill_now
from engine.config import ConfigError, Settings, load_settings, parse_events
from engine.envelope import EnvelopeError, parse_webhook
from engine.findings import MappingError
from engine.mapping import Mappings, load_mappings
from engine.message import RenderError
from engine.operations import replay_dead_letters
from engine.outbox import Outbox, OutboxUnavailable, describe_db, open_outbox
from engine.runtime import load_server_mappings
from engine.selection import Selection
from engine.validate import find_fixtures, validate

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A user's mistake (bad file, bad setting): one line on stderr and exit 2, never a traceback."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (UsageError, ConfigError) as exc:
        print(f"engine: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description="Aircall webhooks to Segment, through YAML mappings.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", default=".env", help="settings file read after the environment (default .env)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    check = commands.add_parser("validate", help="check every mapping file; exit 1 on any finding")
    check.add_argument("directory", nargs="?", type=Path, help="mappings folder (default ENGINE_MAPPINGS or mappings/)")
    check.add_argument("--fixtures", type=Path, help="sample webhooks to render (default tests/fixtures beside it)")
    check.add_argument("--json", action="store_true", help="print the findings as JSON")
    check.set_defaults(run=_validate)

    render = commands.add_parser("render", help="print the Segment messages one webhook would produce")
    render.add_argument("payload", help="a webhook body as Aircall POSTs it, or - for standard input")
    render.add_argument("--mappings", type=Path, help="mappings folder (default ENGINE_MAPPINGS or mappings/)")
    render.set_defaults(run=_render)

    serve = commands.add_parser("serve", help="run the webhook server (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="server processes sharing the outbox (default 1)")
    serve.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies whose X-Forwarded-* headers are trusted (default 127.0.0.1: a proxy on this machine)",
    )
    serve.set_defaults(run=_serve)

    outbox = commands.add_parser("outbox", help="inspect the outbox; replay or discard dead letters")
    outbox_commands = outbox.add_subparsers(required=True, metavar="ACTION")
    status = outbox_commands.add_parser("status", help="pending, delivered and dead-lettered messages")
    status.add_argument("--json", action="store_true")
    status.add_argument("--dead", action="store_true", help="also list the dead letters with their reasons")
    status.set_defaults(run=_outbox_status)
    replay = outbox_commands.add_parser(
        "replay", help="retry pending messages now; with --dead, re-render dead letters with the current mappings"
    )
    replay.add_argument("--dead", action="store_true", help="replay dead letters")
    replay.add_argument("--id", type=int, action="append", dest="ids", help="only this dead letter (repeatable)")
    replay.set_defaults(run=_outbox_replay)
    discard = outbox_commands.add_parser(
        "discard", help="delete dead letters that will never be sent (printed first, for the record)"
    )
    chosen = discard.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--id", type=int, action="append", dest="ids", help="this dead letter (repeatable)")
    chosen.add_argument("--all", action="store_true", help="every dead letter not replayed")
    discard.set_defaults(run=_outbox_discard)

    aircall = commands.add_parser("aircall", help="set up Aircall from the terminal (AIRCALL_API_ID/TOKEN)")
    aircall_commands = aircall.add_subparsers(required=True, metavar="ACTION")
    connect = aircall_commands.add_parser("connect", help="create (or find) the webhook and print its token")
    connect.add_argument("--url", required=True, help="the public URL of /webhooks/aircall on your server")
    connect.add_argument("--events", help="comma-separated events (default AIRCALL_EVENTS, else all 26)")
    connect.add_argument("--name", default="aircall-segment", help="the webhook's name in Aircall")
    connect.add_argument(
        "--write-env", nargs="?", const=".env", metavar="FILE",
        help="also put the token in AIRCALL_WEBHOOK_TOKEN of this settings file (default .env)",
    )  # fmt: skip
    connect.set_defaults(run=_aircall_connect)
    aircall_commands.add_parser("webhooks", help="list the account's webhooks").set_defaults(run=_aircall_webhooks)
    aircall_commands.add_parser("numbers", help="list numbers with their ids and digits").set_defaults(
        run=_aircall_numbers
    )

    back = commands.add_parser("backfill", help="send history from Aircall's REST API through the mappings")
    back.add_argument("--since", required=True, help="start date, YYYY-MM-DD (UTC) or ISO 8601")
    back.add_argument("--until", help="end date, excluded (default: now)")
    back.add_argument(
        "--resources", default="calls,users,contacts,numbers", help="comma list of calls, users, contacts, numbers"
    )
    back.set_defaults(run=_backfill)
    return parser


def _validate(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    directory = args.directory or settings.mappings_dir
    fixtures = args.fixtures if args.fixtures is not None else find_fixtures(directory)
    if args.fixtures is not None and not args.fixtures.is_dir():
        raise UsageError(f"--fixtures: {args.fixtures} is not a folder")
    report = validate(directory, settings.events, fixtures)
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


def _render(args: argparse.Namespace) -> int:
    settings = load_settings(args.env_file)
    directory = args.mappings or settings.mappings_dir
    body = _read_payload(args.payload)
    try:
        webhook = parse_webhook(body)
    except EnvelopeError as exc:
        raise UsageError(f"{args.payload}: {exc}") from None
    mappings = _mappings_or_findings(lambda: load_mappings(directory))
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


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = load_settings(args.env_file)
    try:  # the same checks as the server's start-up, to fail here with a plain message and exit 2
        load_server_mappings(settings)
    except MappingError as exc:
        for finding in exc.findings:
            print(finding, file=sys.stderr)
        raise UsageError(f"the mappings in {settings.mappings_dir} have problems; run `engine validate`") from None
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    os.environ["ENGINE_ENV_FILE"] = args.env_file  # the workers read the settings themselves
    with metrics.shared_across_workers(args.workers):
        uvicorn.run(
            "engine.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            proxy_headers=True,
            forwarded_allow_ips=args.forwarded_allow_ips,
            timeout_graceful_shutdown=30,
            log_config=logs.uvicorn_log_config(settings.log_format),
            log_level=settings.log_level,
        )
    return EXIT_OK


def _open_outbox(args: argparse.Namespace, create: bool = False) -> Outbox:
    settings = load_settings(args.env_file)
    try:
        return open_outbox(settings.db, create=create)
    except FileNotFoundError:
        raise UsageError(f"ENGINE_DB: no outbox at {settings.db} (the server creates it on first start)") from None
    except (ValueError, sqlite3.Error, OutboxUnavailable) as exc:
        raise UsageError(f"ENGINE_DB: cannot open {describe_db(settings.db)}: {exc}") from None


def _outbox_status(args: argparse.Namespace) -> int:
    outbox = _open_outbox(args)
    stats = outbox.stats()
    letters = outbox.dead_letters() if args.dead else []
    if args.json:
        report = stats.as_dict()
        if args.dead:
            report["dead"] = [
                {"id": d.id, "message_id": d.message_id, "event": d.event, "reason": d.reason, "attempts": d.attempts}
                for d in letters
            ]
        print(json.dumps(report, indent=2))
        return EXIT_OK
    age = "-" if stats.oldest_pending_age is None else f"{stats.oldest_pending_age:.0f}s"
    print(f"pending {stats.pending} (due now {stats.due}, oldest {age})")
    print(f"delivered {stats.delivered} (kept for the retention period)")
    print(f"dead letters {stats.dead_letters}")
    if stats.last_error:
        print(f"last error: {stats.last_error}")
    for letter in letters:
        what = letter.message_id or "whole webhook"
        print(f"  dead #{letter.id} {letter.event} {what}: {letter.reason}")
    return EXIT_OK


def _outbox_replay(args: argparse.Namespace) -> int:
    outbox = _open_outbox(args)
    if not args.dead:
        if args.ids:
            raise UsageError("--id selects dead letters: use it with --dead")
        print(f"{outbox.retry_now()} pending message(s) due now")
        return EXIT_OK
    settings = load_settings(args.env_file)
    mappings = _mappings_or_findings(lambda: load_mappings(settings.mappings_dir))
    if mappings is None:
        return EXIT_FINDINGS
    report = replay_dead_letters(outbox, mappings, args.ids)
    print(f"replayed {len(report.replayed)} dead letter(s): {report.messages} message(s) queued again")
    for letter_id, reason in report.failed:
        print(f"  dead #{letter_id} still fails: {reason}", file=sys.stderr)
    return EXIT_FINDINGS if report.failed else EXIT_OK


def _outbox_discard(args: argparse.Namespace) -> int:
    outbox = _open_outbox(args)
    discarded = outbox.discard_dead_letters(None if args.all else args.ids)
    for letter in discarded:
        what = letter.message_id or "whole webhook"
        print(f"  discarded dead #{letter.id} {letter.event} {what}: {letter.reason}")
    print(f"discarded {len(discarded)} dead letter(s)")
    missing = sorted(set(args.ids or ()) - {letter.id for letter in discarded})
    if missing:
        listed = ", ".join(f"#{i}" for i in missing)
        print(f"engine: no dead letter waiting with id {listed} (see engine outbox status --dead)", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def _aircall_client(args: argparse.Namespace) -> tuple[Settings, AircallClient]:
    settings = load_settings(args.env_file)
    if not (settings.aircall_api_id and settings.aircall_api_token):
        raise UsageError("set AIRCALL_API_ID and AIRCALL_API_TOKEN (Aircall dashboard: Integrations, API keys)")
    return settings, AircallClient(settings.aircall_api_url, settings.aircall_api_id, settings.aircall_api_token)


def _aircall(action):  # type: ignore[no-untyped-def]
    """Run an Aircall API action; a refusal or an unreachable API is a one-line error and exit 2."""

    def run(args: argparse.Namespace) -> int:
        try:
            return action(args)
        except AircallError as exc:
            raise UsageError(str(exc)) from None

    return run


@_aircall
def _aircall_connect(args: argparse.Namespace) -> int:
    settings, client = _aircall_client(args)
    events = sorted(parse_events(args.events) if args.events is not None else settings.events)
    if not events:
        raise UsageError("no events to subscribe: AIRCALL_EVENTS (or --events) selects none")
    existing = next((w for w in client.webhooks() if w.get("url") == args.url), None)
    webhook = existing or client.create_webhook(args.url, events, args.name)
    token = webhook.get("token")
    if not token:
        raise UsageError("Aircall did not return the webhook's token")
    verb = "found" if existing else "created"
    print(f"{verb} webhook {webhook.get('webhook_id') or webhook.get('id')} for {args.url}", file=sys.stderr)
    if existing and sorted(existing.get("events") or []) != events:
        print("note: its events differ from the ones asked for; change them in the Aircall dashboard", file=sys.stderr)
    if args.write_env:
        write_env_token(Path(args.write_env), token)
        print(f"AIRCALL_WEBHOOK_TOKEN written to {args.write_env}", file=sys.stderr)
    print(token)
    return EXIT_OK


def write_env_token(path: Path, token: str) -> None:
    """Put the token first in AIRCALL_WEBHOOK_TOKEN, keeping tokens already there (a rotation loses nothing)."""
    lines = path.read_text().splitlines() if path.exists() else []
    for index, line in enumerate(lines):
        name, sep, value = line.partition("=")
        if sep and name.strip() == "AIRCALL_WEBHOOK_TOKEN":
            kept = [t.strip() for t in value.strip().strip("\"'").split(",") if t.strip() and t.strip() != token]
            lines[index] = "AIRCALL_WEBHOOK_TOKEN=" + ",".join([token, *kept])
            break
    else:
        lines.append(f"AIRCALL_WEBHOOK_TOKEN={token}")
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


@_aircall
def _aircall_webhooks(args: argparse.Namespace) -> int:
    _, client = _aircall_client(args)
    for webhook in client.webhooks():
        state = "active" if webhook.get("active", True) else "inactive"
        ident = webhook.get("webhook_id") or webhook.get("id")
        print(f"{ident}\t{state}\t{len(webhook.get('events') or [])} events\t{webhook.get('url')}")
    return EXIT_OK


@_aircall
def _aircall_numbers(args: argparse.Namespace) -> int:
    _, client = _aircall_client(args)
    for number in client.numbers():
        print(f"{number.get('id')}\t{number.get('digits')}\t{number.get('name')}\t{number.get('country') or ''}")
    return EXIT_OK


@_aircall
def _backfill(args: argparse.Namespace) -> int:
    settings, client = _aircall_client(args)
    try:
        since = parse_date(args.since, "--since")
        until = parse_date(args.until, "--until") if args.until else backfill_now()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if until <= since:
        raise UsageError("--until must be after --since")
    names = [n.strip() for n in args.resources.split(",") if n.strip()]
    unknown = [n for n in names if n not in RESOURCES]
    if unknown or not names:
        raise UsageError(f"--resources: {', '.join(unknown) or 'none'}; choose from {', '.join(RESOURCES)}")
    mappings = _mappings_or_findings(lambda: load_server_mappings(settings))
    if mappings is None:
        return EXIT_FINDINGS
    outbox = _open_outbox(args, create=True)
    selection = Selection(settings.events, settings.numbers)
    last_line = [0.0]

    def report(progress: Progress, final: bool = False) -> None:
        if final or time.monotonic() - last_line[0] >= 2:
            last_line[0] = time.monotonic()
            log = client.log
            print(
                f"{progress.resource}: {progress.fetched} fetched, {progress.queued} queued, "
                f"{progress.skipped} skipped, {progress.dead_lettered} dead-lettered; "
                f"window {progress.windows_done}/{progress.windows_total}; "
                f"{log.requests} requests, rate-limit waits {log.waits} ({log.seconds:.1f} s)",
                file=sys.stderr,
            )

    for name in names:
        progress = backfill(client, outbox, mappings, selection, RESOURCES[name], since, until, report)
        report(progress, final=True)
        print(f"{name}\tfetched {progress.fetched}\tqueued {progress.queued}\tskipped {progress.skipped}"
              f"\tdead-lettered {progress.dead_lettered}")  # fmt: skip
    print(f"rate limit: {client.log.waits} waits, {client.log.seconds:.1f} s of {client.log.requests} requests")
    return EXIT_OK


def _mappings_or_findings(load: Callable[[], Mappings]) -> Mappings | None:
    """The mappings, or None after printing every finding (the caller exits 1)."""
    try:
        return load()
    except MappingError as exc:
        for finding in exc.findings:
            print(finding, file=sys.stderr)
        return None


def _read_payload(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(name).read_bytes()
    except OSError as exc:
        raise UsageError(f"{name}: cannot read: {exc.strerror}") from None


if __name__ == "__main__":
    sys.exit(main())
