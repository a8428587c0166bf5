"""`engine outbox status | replay | discard`: what waits in the outbox, and the operator's actions."""

from __future__ import annotations

import argparse
import json
import sys

from engine.cli.common import (
    EXIT_FINDINGS,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    mappings_or_findings,
    open_outbox_for,
    settings_for,
)
from engine.digits import ascii_digits
from engine.mapping.load import load_mappings
from engine.processing.fetch import waiting_fetcher
from engine.processing.replay import replay_dead_letters


def add_commands(commands: argparse._SubParsersAction) -> None:
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
    replay.add_argument("--id", type=_row_id, action="append", dest="ids", help="only this dead letter (repeatable)")
    replay.set_defaults(run=_outbox_replay)
    discard = outbox_commands.add_parser(
        "discard", help="delete dead letters that will never be sent (printed first, for the record)"
    )
    chosen = discard.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--id", type=_row_id, action="append", dest="ids", help="this dead letter (repeatable)")
    chosen.add_argument("--all", action="store_true", help="every dead letter not replayed")
    discard.set_defaults(run=_outbox_discard)


def _outbox_status(args: argparse.Namespace) -> int:
    outbox = open_outbox_for(args, read_only=True)
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
    lag = "-" if stats.oldest_unprocessed_age is None else f"{stats.oldest_unprocessed_age:.0f}s"
    print(f"webhooks to map {stats.unprocessed} (oldest {lag})")
    if stats.unmapped_total:
        shown = sorted(stats.unmapped.items(), key=lambda pair: (-pair[1], pair[0]))[:10]
        held = ", ".join(f"{event} {count}" for event, count in shown)
        if stats.unmapped_events > len(shown):
            held += f" and {stats.unmapped_events - len(shown)} more events"
        print(f"held, no mapping for their event {stats.unmapped_total} ({held})")
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
    outbox = open_outbox_for(args)
    if not args.dead:
        if args.ids:
            raise UsageError("--id selects dead letters: use it with --dead")
        print(f"{outbox.retry_now()} pending message(s) due now")
        return EXIT_OK
    settings = settings_for(args)
    mappings = mappings_or_findings(lambda: load_mappings(settings.mappings_dir))
    if mappings is None:
        return EXIT_FINDINGS
    report = replay_dead_letters(outbox, mappings, args.ids, waiting_fetcher(settings))
    print(f"replayed {len(report.replayed)} dead letter(s): {report.messages} message(s) queued again")
    for letter_id, reason in report.failed:
        print(f"  dead #{letter_id} still fails: {reason}", file=sys.stderr)
    if _report_missing(args.ids, [*report.replayed, *(i for i, _ in report.failed)]):
        return EXIT_USAGE
    return EXIT_FINDINGS if report.failed else EXIT_OK


def _outbox_discard(args: argparse.Namespace) -> int:
    outbox = open_outbox_for(args)
    discarded = outbox.discard_dead_letters(None if args.all else args.ids)
    for letter in discarded:
        what = letter.message_id or "whole webhook"
        print(f"  discarded dead #{letter.id} {letter.event} {what}: {letter.reason}")
    print(f"discarded {len(discarded)} dead letter(s)")
    return EXIT_USAGE if _report_missing(args.ids, [letter.id for letter in discarded]) else EXIT_OK


MAX_ROW_ID = 2**63 - 1  # what SQLite and PostgreSQL ids can be; a larger number is no row's


def _row_id(text: str) -> int:
    if not ascii_digits(text.strip()) or not 1 <= int(text) <= MAX_ROW_ID:
        raise argparse.ArgumentTypeError(f"{text!r} is not a dead letter's id (a whole number, 1 or more)")
    return int(text)


def _report_missing(asked: list[int] | None, found: list[int]) -> bool:
    """Say which of the dead letters asked for by --id were not there; whether any was missing."""
    missing = sorted(set(asked or ()) - set(found))
    if missing:
        listed = ", ".join(f"#{i}" for i in missing)
        print(f"engine: no dead letter waiting with id {listed} (see engine outbox status --dead)", file=sys.stderr)
    return bool(missing)
