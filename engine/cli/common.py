"""What every command group shares: exit codes, the usage error, the settings and the outbox as the
command line names them."""

from __future__ import annotations

import argparse
import logging
import sqlite3
import sys
from collections.abc import Callable

from engine.config import Settings, load_settings
from engine.mapping.findings import MappingError
from engine.mapping.load import Mappings
from engine.outbox import Outbox, OutboxUnavailable, describe_db, open_outbox

EXIT_OK, EXIT_FINDINGS, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A user's mistake (bad file, bad setting): one line on stderr and exit 2, never a traceback."""


def settings_for(args: argparse.Namespace) -> Settings:
    """The settings; a file named with --env-file must exist, the default .env need not."""
    return load_settings(args.env_file or ".env", required=args.env_file is not None)


def open_outbox_for(
    args: argparse.Namespace, create: bool = False, read_only: bool = False, migrate: bool = False
) -> Outbox:
    """The outbox of the settings; only `engine serve` migrates one of an older schema (engine.outbox)."""
    settings = settings_for(args)
    # The pool's own warnings would repeat each failed attempt, host names and all: the error below says it once.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    try:
        return open_outbox(settings.db, create=create, read_only=read_only, migrate=migrate)
    except FileNotFoundError:
        raise UsageError(f"ENGINE_DB: no outbox at {settings.db} (the server creates it on first start)") from None
    except (ValueError, sqlite3.Error, OutboxUnavailable) as exc:
        raise UsageError(f"ENGINE_DB: cannot open {describe_db(settings.db)}: {exc}") from None


def mappings_or_findings(load: Callable[[], Mappings]) -> Mappings | None:
    """The mappings, or None after printing every finding (the caller exits 1)."""
    try:
        return load()
    except MappingError as exc:
        for finding in exc.findings:
            print(finding, file=sys.stderr)
        return None
