"""`engine aircall connect | webhooks | numbers` and `engine backfill`: Aircall's side, from the terminal."""

from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path

from engine.aircall.api import AircallClient, AircallError
from engine.aircall.backfill import RESOURCES, Walk, parse_date, plan, queue_webhooks, run_walks
from engine.aircall.events import default_subscription, is_event_name, known_events
from engine.aircall.progress import BackfillDisplay, plural
from engine.aircall.selection import Selection
from engine.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    UsageError,
    mappings_or_findings,
    open_outbox_for,
    settings_for,
)
from engine.config import Settings, parse_env_line, parse_events
from engine.digits import ascii_digits
from engine.mapping.findings import MappingsFolderError
from engine.mapping.load import inspect_mappings
from engine.processing.fetch import WaitingFetcher
from engine.server.runtime import load_server_mappings


def add_commands(commands: argparse._SubParsersAction) -> None:
    aircall = commands.add_parser("aircall", help="set up Aircall from the terminal (AIRCALL_API_ID/TOKEN)")
    aircall_commands = aircall.add_subparsers(required=True, metavar="ACTION")
    connect = aircall_commands.add_parser("connect", help="create (or find) the webhook and print its token")
    connect.add_argument("--url", required=True, help="the public URL of /webhooks/aircall on your server")
    connect.add_argument(
        "--events",
        help="comma-separated events, or all (default AIRCALL_EVENTS, else all: every event but the deprecated V1 "
        "user events, whose V2 are subscribed instead)",
    )
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
    back.add_argument("--since", required=True, help="calls from this date, YYYY-MM-DD (UTC) or ISO 8601")
    back.add_argument("--until", help="calls until this date, excluded (default: now)")
    back.add_argument(
        "--resources", default="calls,users,contacts,numbers", help="comma list of calls, users, contacts, numbers"
    )
    back.add_argument("--contacts-since", metavar="DATE", help="only contacts created since DATE (default: all)")
    back.add_argument(
        "--rate", type=_per_minute, default=45, metavar="N",
        help="requests a minute to Aircall, out of its 60 for the whole account (default 45: 15 left to others)",
    )  # fmt: skip
    back.set_defaults(run=_backfill)


def _aircall_client(args: argparse.Namespace, rate: int | None = None) -> tuple[Settings, AircallClient]:
    settings = settings_for(args)
    if not (settings.aircall_api_id and settings.aircall_api_token):
        raise UsageError("set AIRCALL_API_ID and AIRCALL_API_TOKEN (Aircall dashboard: Integrations, API keys)")
    api = settings.aircall_api_url, settings.aircall_api_id, settings.aircall_api_token
    return settings, AircallClient(*api, rate=rate)


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
    choice = parse_events(args.events) if args.events is not None else settings.events
    events = default_subscription(choice.listed, _mapped_events(settings))
    if not events:
        raise UsageError("no events to subscribe: AIRCALL_EVENTS (or --events) selects none")
    if args.write_env and not Path(args.write_env).resolve().parent.is_dir():
        # Before Aircall creates anything: a token printed but not written is a token to copy by hand.
        raise UsageError(f"--write-env: {Path(args.write_env).parent} is not a folder; create it first")
    existing = next((w for w in client.webhooks() if w.get("url") == args.url), None)
    webhook = existing or client.create_webhook(args.url, events, args.name)
    token = webhook.get("token")
    if not token:
        raise UsageError("Aircall did not return the webhook's token")
    verb = "found" if existing else "created"
    ident = webhook.get("webhook_id") or webhook.get("id")
    print(f"{verb} webhook {ident} for {args.url}", file=sys.stderr)
    if existing and existing.get("active") is False:
        # Aircall turns off a webhook whose deliveries keep failing, and sends nothing more until it is on again.
        client.enable_webhook(str(ident))
        print(
            f"re-enabled webhook {ident}: Aircall had disabled it after failed deliveries; what it did not "
            "deliver meanwhile can be fetched with engine backfill",
            file=sys.stderr,
        )
    if existing and sorted(existing.get("events") or []) != sorted(events):
        print("note: its events differ from the ones asked for; change them in the Aircall dashboard", file=sys.stderr)
    if args.write_env:
        write_env_token(Path(args.write_env), token)
        print(f"AIRCALL_WEBHOOK_TOKEN written to {args.write_env}", file=sys.stderr)
    print(token)
    return EXIT_OK


def write_env_token(path: Path, token: str) -> None:
    """Put the token first in AIRCALL_WEBHOOK_TOKEN, keeping tokens already there (a rotation loses nothing)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--write-env: {path}: cannot read: {exc}") from None
    # The line the settings are read from: the last one naming it, written `export NAME=...` or not.
    setting = [i for i, line in enumerate(lines) if (parse_env_line(line) or ("",))[0] == "AIRCALL_WEBHOOK_TOKEN"]
    if setting:
        index = setting[-1]
        _, value = parse_env_line(lines[index]) or ("", "")
        kept = [t.strip() for t in value.split(",") if t.strip() and t.strip() != token]
        export = "export " if lines[index].lstrip().startswith("export ") else ""
        lines[index] = f"{export}AIRCALL_WEBHOOK_TOKEN=" + ",".join([token, *kept])
    else:
        lines.append(f"AIRCALL_WEBHOOK_TOKEN={token}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path.chmod(0o600)


def _mapped_events(settings: Settings) -> frozenset[str]:
    """The events the mappings folder's files name in `aircall_event` (a file's name says nothing: a backup copy
    beside the others maps what it says), those with findings included; none if the folder is unreadable."""
    try:
        return frozenset(e for e in inspect_mappings(settings.mappings_dir)[0].claimed if is_event_name(e))
    except MappingsFolderError:
        return frozenset()


@_aircall
def _aircall_webhooks(args: argparse.Namespace) -> int:
    settings, client = _aircall_client(args)
    mapped = _mapped_events(settings)
    webhooks = client.webhooks()
    if not webhooks:
        print("no webhook on this account: engine aircall connect --url URL creates one", file=sys.stderr)
        return EXIT_OK
    print("id\tstate\tevents\turl")
    for webhook in webhooks:
        state = "active" if webhook.get("active", True) else "inactive"
        ident = webhook.get("webhook_id") or webhook.get("id")
        events = webhook.get("events") or []
        # A webhook created without a list of events is sent every event Aircall has.
        sent = set(events) if events else set(known_events())
        count = f"{len(events)} events" if events else "all events"
        print(f"{ident}\t{state}\t{count}\t{webhook.get('url')}")
        unmapped = sorted(sent - mapped)
        if unmapped:
            print(f"  not mapped (held until a mapping exists): {', '.join(unmapped)}")
    return EXIT_OK


@_aircall
def _aircall_numbers(args: argparse.Namespace) -> int:
    _, client = _aircall_client(args)
    numbers = client.numbers()
    if not numbers:
        print("no number on this account", file=sys.stderr)
        return EXIT_OK
    print("id\tdigits\tname\tcountry")  # the columns' names: AIRCALL_NUMBERS takes ids or digits
    for number in numbers:
        print(f"{number.get('id')}\t{number.get('digits')}\t{number.get('name')}\t{number.get('country') or ''}")
    return EXIT_OK


def _per_minute(text: str) -> int:
    if not ascii_digits(text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of requests a minute, 1 or more")
    return int(text)


@_aircall
def _backfill(args: argparse.Namespace) -> int:
    settings, client = _aircall_client(args, rate=args.rate)
    try:
        since = parse_date(args.since, "--since")
        until = parse_date(args.until, "--until") if args.until else None
        contacts_since = parse_date(args.contacts_since, "--contacts-since") if args.contacts_since else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if until is not None and until <= since:
        raise UsageError("--until must be after --since")
    if until is None and since >= time.time():
        raise UsageError(f"--since: {args.since} is in the future; nothing has happened there yet")
    names = [n.strip() for n in args.resources.split(",") if n.strip()]
    unknown = [n for n in names if n not in RESOURCES]
    if unknown or not names:
        raise UsageError(f"--resources: {', '.join(unknown) or 'none'}; choose from {', '.join(RESOURCES)}")
    mappings = mappings_or_findings(lambda: load_server_mappings(settings))
    if mappings is None:
        return EXIT_FINDINGS
    outbox = open_outbox_for(args, create=True)
    display = BackfillDisplay(sys.stderr, client)
    client.on_wait = display.waiting
    selection = Selection(settings.events, settings.numbers)
    queue = functools.partial(queue_webhooks, outbox, mappings, selection, fetcher=WaitingFetcher(client))
    ranges = plan(outbox, names, since, until, contacts_since, events=settings.events, mapped=mappings.by_event)
    walks = [Walk(client, outbox, resource, start, end, queue, display.note) for resource, start, end in ranges]
    try:
        run_walks(walks, display)
    except KeyboardInterrupt:
        display.interrupted()
        raise
    except AircallError as exc:
        raise AircallError(
            f"{exc}; what was listed is queued, and the same command continues at the next page"
        ) from None
    # Objects from `fetched` to `dead-lettered`, each counted once; then the messages new in the outbox.
    for walk in walks:
        p = walk.progress
        print(f"{p.resource}\tfetched {p.fetched}\tqueued {p.queued}\talready queued {p.already}"
              f"\tskipped {p.skipped}\tdead-lettered {p.dead_lettered}\tmessages {p.messages}"
              f"\trequests {p.requests}")  # fmt: skip
    log = client.log
    print(
        f"rate limit: {plural(log.waits, 'wait')}, {log.seconds:.1f} s of {plural(log.requests, 'request')}, "
        f"{log.throttled} answered 429"
    )
    return EXIT_OK
