"""The outbox: where webhooks and Segment messages wait between the stages, durably.

`open_outbox` picks the store ENGINE_DB names; the records and the protocol are in engine.outbox.base,
the stores in engine.outbox.sqlite and engine.outbox.postgres (which needs the postgres extra)."""

from __future__ import annotations

from engine.outbox.base import (
    ACTIVITY_EXACT_ROWS,
    ALL_SESSIONS,
    CONSOLE_SESSION_SECONDS,
    CONSOLE_SLACK_SECONDS,
    DEAD_LETTER_COLUMNS,
    FIND_SCAN_ROWS,
    UNMAPPED_SHOWN,
    WAITING_FOR_API,
    WEBHOOK_OUTCOMES,
    Activity,
    Claimed,
    DeadLetter,
    FoundWebhooks,
    NewMessage,
    Outbox,
    OutboxRefused,
    OutboxStats,
    OutboxUnavailable,
    PendingWebhook,
    Processed,
    StoredMessage,
    StoredWebhook,
    WebhookFilter,
    WebhookSummary,
    check_postgres_url,
    describe_db,
    first_id,
    is_postgres,
    new_owner,
    per_minute,
    sqlite_path,
    stored_key,
    stored_webhook,
)
from engine.outbox.sqlite import SCHEMA_VERSION, SqliteOutbox


def open_outbox(
    setting: str, *, create: bool = True, read_only: bool = False, synced: bool = True, migrate: bool = True
) -> Outbox:
    """The outbox ENGINE_DB names: a SQLite file (the default) or a PostgreSQL database shared by replicas.

    `create`: a missing file, or an empty PostgreSQL database, is given the outbox's tables (the server, a
    backfill). `read_only`: nothing is written, not even a migration (engine outbox status). `migrate=False`: an
    outbox of an older schema is refused, not migrated (every command but `engine serve`: a server of the older
    version may still be running on it, and would go on writing it the old way). Either way, what is not this
    engine's outbox is refused: OutboxRefused.
    `synced=False`: commits are not flushed to disk one by one (the processing stage's connection: what it writes
    can be written again from the stored webhooks, which are; see engine.processing.child).
    """
    if is_postgres(setting):
        check_postgres_url(setting)
        try:
            from engine.outbox.postgres import PostgresOutbox  # psycopg is needed only by those who use it
        except ImportError as exc:
            if not (exc.name or "").startswith("psycopg"):
                raise
            raise OutboxRefused(
                "a postgresql:// outbox needs psycopg: pip install 'aircall-segment[postgres]'"
            ) from None
        return PostgresOutbox(setting, read_only=read_only, synced=synced, migrate=migrate, create=create)
    return SqliteOutbox(sqlite_path(setting), create=create, read_only=read_only, synced=synced, migrate=migrate)


__all__ = [
    "ACTIVITY_EXACT_ROWS",
    "ALL_SESSIONS",
    "CONSOLE_SESSION_SECONDS",
    "CONSOLE_SLACK_SECONDS",
    "DEAD_LETTER_COLUMNS",
    "FIND_SCAN_ROWS",
    "SCHEMA_VERSION",
    "UNMAPPED_SHOWN",
    "WAITING_FOR_API",
    "WEBHOOK_OUTCOMES",
    "Activity",
    "Claimed",
    "DeadLetter",
    "FoundWebhooks",
    "NewMessage",
    "Outbox",
    "OutboxRefused",
    "OutboxStats",
    "OutboxUnavailable",
    "PendingWebhook",
    "Processed",
    "SqliteOutbox",
    "StoredMessage",
    "StoredWebhook",
    "WebhookFilter",
    "WebhookSummary",
    "check_postgres_url",
    "describe_db",
    "first_id",
    "is_postgres",
    "new_owner",
    "open_outbox",
    "per_minute",
    "sqlite_path",
    "stored_key",
    "stored_webhook",
]
