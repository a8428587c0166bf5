"""`engine outbox status` (as text), `engine outbox replay` (pending messages due now) and `engine outbox
discard` (dead letters nobody will replay), through the CLI."""

from __future__ import annotations

import pytest

from engine.aircall.envelope import Webhook
from engine.outbox import NewMessage, Processed, SqliteOutbox, stored_webhook
from tests.conftest import MAPPINGS
from tests.harness import free_port


def backlog(path) -> SqliteOutbox:
    outbox = SqliteOutbox(path)
    record = stored_webhook(Webhook("call", "call.ended", 1_700_000_000, "", {"id": 1}))
    outbox.enqueue([(record, [NewMessage("m-1", "call.ended", b"{}"), NewMessage("m-2", "call.ended", b"{}")])])
    claimed = outbox.claim(10, 30, "worker")
    outbox.retry([c.id for c in claimed], 3600, "Segment answered 503: down", "worker")
    return outbox


def test_status_as_text_shows_pending_due_and_the_last_error(engine, tmp_path):
    backlog(tmp_path / "o.sqlite3").close()
    run = engine("outbox", "status", env={"ENGINE_DB": str(tmp_path / "o.sqlite3")})
    assert run.code == 0
    lines = run.out.splitlines()
    assert lines[0] == "webhooks to map 0 (oldest -)"
    assert lines[1].startswith("pending 2 (due now 0, oldest ")
    assert lines[2:] == ["delivered 0 (kept for the retention period)", "dead letters 0",
                         "last error: Segment answered 503: down"]  # fmt: skip


def test_replay_makes_pending_messages_due_now(engine, tmp_path):
    outbox = backlog(tmp_path / "o.sqlite3")
    env = {"ENGINE_DB": str(tmp_path / "o.sqlite3")}
    run = engine("outbox", "replay", env=env)
    assert (run.code, run.out.strip()) == (0, "2 pending message(s) due now")
    assert outbox.stats().due == 2
    misuse = engine("outbox", "replay", "--id", "3", env=env)
    assert (misuse.code, misuse.err.strip()) == (2, "engine: --id selects dead letters: use it with --dead")


def test_status_without_an_outbox_is_a_usage_error(engine, tmp_path):
    run = engine("outbox", "status", env={"ENGINE_DB": str(tmp_path / "none.sqlite3")})
    assert run.code == 2 and "no outbox at" in run.err


def test_discard_deletes_the_chosen_dead_letters_and_says_which(engine, tmp_path):
    outbox = backlog(tmp_path / "o.sqlite3")
    outbox.retry_now()
    outbox.dead([c.id for c in outbox.claim(10, 30, "worker")], "Segment answered 400: bad userId")
    outbox.keep_webhook(stored_webhook(Webhook("call", "call.ended", 1_700_000_009, "", {"id": 9})), "TypeError")
    first, second, third = outbox.dead_letters()
    env = {"ENGINE_DB": str(tmp_path / "o.sqlite3")}
    assert engine("outbox", "discard", env=env).code == 2  # --id or --all: never everything by accident
    one = engine("outbox", "discard", "--id", str(first.id), "--id", "999", env=env)
    assert one.code == 2 and "no dead letter waiting with id #999" in one.err
    assert one.out.splitlines() == [
        f"  discarded dead #{first.id} call.ended m-1: Segment answered 400: bad userId",
        "discarded 1 dead letter(s)",
    ]
    rest = engine("outbox", "discard", "--all", env=env)
    assert rest.code == 0 and rest.out.splitlines()[-1] == "discarded 2 dead letter(s)"
    assert f"dead #{third.id} call.ended whole webhook: TypeError" in rest.out
    status = engine("outbox", "status", "--dead", env=env)
    assert "dead letters 0" in status.out and "dead #" not in status.out
    assert outbox.stats().pending == 0 and second.id not in {d.id for d in outbox.dead_letters(include_replayed=True)}


def test_replay_and_discard_of_an_unknown_dead_letter_give_the_same_answer(engine, tmp_path):
    outbox = backlog(tmp_path / "o.sqlite3")
    outbox.keep_webhook(stored_webhook(Webhook("call", "call.ended", 1_700_000_009, "", {"id": 9})), "TypeError")
    [letter] = outbox.dead_letters()
    env = {"ENGINE_DB": str(tmp_path / "o.sqlite3")}
    missing = "engine: no dead letter waiting with id #999 (see engine outbox status --dead)\n"
    replay = engine("outbox", "replay", "--dead", "--id", "999", env=env)
    assert (replay.code, replay.err) == (2, missing)
    discard = engine("outbox", "discard", "--id", "999", env=env)
    assert (discard.code, discard.err) == (2, missing)
    both = engine("outbox", "replay", "--dead", "--id", str(letter.id), "--id", "999", env=env)
    assert (both.code, both.err) == (2, missing)
    assert both.out == "replayed 1 dead letter(s): 1 message(s) queued again\n"


# -- what ENGINE_DB names is checked before anything is read or written -------------------------------------


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_status_reads_only_and_refuses_a_file_that_is_not_an_outbox(engine, tmp_path):
    import sqlite3

    folder = tmp_path / "other"
    folder.mkdir()
    with sqlite3.connect(folder / "notes.db") as conn:
        conn.execute("CREATE TABLE notes (text TEXT)")
    sqlite3.connect(folder / "empty.db").execute("PRAGMA user_version").fetchone()  # an empty SQLite file
    (folder / "text.txt").write_text("not a database, and long enough to have a header of sixteen bytes\n" * 4)
    before = snapshot(folder)
    refusals = {
        "notes.db": "is not an aircall-segment outbox: it holds other tables (notes)",
        "empty.db": "is not an aircall-segment outbox: it has no outbox tables",
        "text.txt": "is not an aircall-segment outbox: file is not a database",
    }
    for name, reason in refusals.items():
        env = {"ENGINE_DB": str(folder / name)}
        for command in (["status"], ["status", "--dead"], ["discard", "--all"], ["replay"]):
            run = engine("outbox", *command, env=env)
            assert (run.code, run.out, run.err) == (2, "", f"engine: ENGINE_DB: {folder / name} {reason}\n")
    assert snapshot(folder) == before  # nothing written, no table and no file created


def test_status_of_a_real_outbox_writes_nothing(engine, tmp_path):
    backlog(tmp_path / "o.sqlite3").close()
    before = snapshot(tmp_path)
    run = engine("outbox", "status", "--dead", env={"ENGINE_DB": str(tmp_path / "o.sqlite3")})
    assert run.code == 0 and "\npending 2 " in run.out
    # SQLite's readers of a WAL file may add its -wal and -shm companions; the outbox itself is untouched.
    after = snapshot(tmp_path)
    assert after["o.sqlite3"] == before["o.sqlite3"] and set(after) <= {*before, "o.sqlite3-wal", "o.sqlite3-shm"}


def test_an_outbox_of_a_newer_engine_is_refused_by_every_command(engine, tmp_path):
    import sqlite3

    from engine.outbox import SCHEMA_VERSION

    backlog(tmp_path / "o.sqlite3").close()
    with sqlite3.connect(tmp_path / "o.sqlite3") as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    env = {"ENGINE_DB": str(tmp_path / "o.sqlite3")}
    reason = (
        f"engine: ENGINE_DB: {tmp_path / 'o.sqlite3'} has outbox schema {SCHEMA_VERSION + 1}, newer than this "
        f"engine's {SCHEMA_VERSION}: upgrade aircall-segment\n"
    )
    for command in (["outbox", "status"], ["outbox", "discard", "--all"], ["outbox", "replay", "--dead"]):
        run = engine(*command, env=env)
        assert (run.code, run.err) == (2, reason)
    serve = engine("serve", "--port", str(free_port()), env=env, timeout=30)
    assert serve.code == 2 and serve.err.endswith(reason.removeprefix("engine: ")) and "Traceback" not in serve.err


def test_a_postgresql_database_without_an_outbox_is_refused_by_commands_that_need_one(engine, postgres_url):
    """Only the server and the backfill create the outbox's tables: replay and discard on a database of another
    application created them there (SQLite refuses a file of another application the same way)."""
    import psycopg

    for command in (["outbox", "replay"], ["outbox", "replay", "--dead"], ["outbox", "discard", "--all"]):
        run = engine(*command, env={"ENGINE_DB": postgres_url})
        assert run.code == 2 and run.err.endswith(": it has no outbox tables\n"), run.err
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('engine_schema')").fetchone()[0] is None
        conn.execute("CREATE TABLE engine_schema (version INTEGER NOT NULL)")  # left empty: still not an outbox
    run = engine("outbox", "discard", "--all", env={"ENGINE_DB": postgres_url})
    assert run.code == 2 and run.err.endswith(": it has no outbox tables\n"), run.err
    with psycopg.connect(postgres_url) as conn:
        assert conn.execute("SELECT to_regclass('webhooks')").fetchone()[0] is None


def test_serve_on_a_port_in_use_says_so_and_leaves_an_older_outbox_unmigrated(engine, tmp_path):
    """An older server still running on the port is most likely running on the same outbox."""
    import socket
    import sqlite3

    from engine.outbox import SCHEMA_VERSION

    backlog(tmp_path / "o.sqlite3").close()
    with sqlite3.connect(tmp_path / "o.sqlite3") as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION - 1}")
    with socket.create_server(("127.0.0.1", 0)) as running:
        port = running.getsockname()[1]
        serve = engine("serve", "--port", str(port), env={"ENGINE_DB": str(tmp_path / "o.sqlite3")}, timeout=30)
    assert (serve.code, serve.out) == (2, "")
    assert serve.err == (
        f"engine: --port: cannot listen on 127.0.0.1:{port}: Address already in use (is a server already running "
        "there?)\n"
    )
    with sqlite3.connect(tmp_path / "o.sqlite3") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION - 1


@pytest.mark.parametrize("host", ["a..b", "a" * 300, "nonexistent.invalid"])
def test_serve_on_a_host_that_names_no_address_is_one_line(engine, tmp_path, host):
    serve = engine("serve", "--host", host, "--port", str(free_port()), env={"ENGINE_DB": str(tmp_path / "o")})
    assert serve.code == 2 and serve.err.startswith(f"engine: --host: {host!r} is ") and "Traceback" not in serve.err
    assert not (tmp_path / "o").exists()


def test_an_outbox_locked_past_the_busy_timeout_is_one_line(engine, tmp_path):
    import sqlite3

    outbox = backlog(tmp_path / "o.sqlite3")
    outbox.keep_webhook(stored_webhook(Webhook("call", "call.ended", 1_700_000_009, "", {"id": 9})), "TypeError")
    outbox.close()
    env = {"ENGINE_DB": str(tmp_path / "o.sqlite3")}
    holder = sqlite3.connect(tmp_path / "o.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than the 3 s busy timeout
    try:
        runs = [engine("outbox", *command, env=env) for command in (["discard", "--all"], ["replay", "--dead"])]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    for run in runs:
        assert (run.code, run.err) == (
            2,
            "engine: ENGINE_DB: the outbox is busy or cannot be written (database is locked); try again\n",
        )


def test_a_postgresql_outbox_without_the_postgres_extra_says_what_to_install(capsys, monkeypatch):
    import sys

    from engine.cli import main

    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if psycopg were not installed
    monkeypatch.delitem(sys.modules, "engine.outbox.postgres", raising=False)
    monkeypatch.setenv("ENGINE_DB", "postgresql://bridge:pw@db.internal/engine")
    assert main(["outbox", "status"]) == 2
    assert capsys.readouterr().err == (
        "engine: ENGINE_DB: a postgresql:// outbox needs psycopg: pip install 'aircall-segment[postgres]'\n"
    )


PASSWORD = "s3cr@t/Kq7"  # an '@' and a '/' not percent-encoded, as people write them


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://bridge:{PASSWORD}@127.0.0.1:1/engine",
        f"postgres://bridge:{PASSWORD}@127.0.0.1:1/engine?sslmode=disable",
        "postgresql://bridge@127.0.0.1:1/engine?password=s3cr-t-Kq7&sslmode=disable",
    ],
)
def test_no_part_of_a_postgresql_password_is_ever_shown(engine, url):
    run = engine("outbox", "status", env={"ENGINE_DB": url})
    assert run.code == 2 and run.out == "" and run.err.count("\n") == 1, run.err
    for part in ("s3cr", "Kq7"):
        assert part not in run.err, run.err


@pytest.mark.parametrize("command", [["status"], ["replay"], ["replay", "--dead"], ["discard", "--all"]], ids=" ".join)
def test_an_outbox_of_an_older_engine_is_left_as_it_is_and_the_command_says_to_start_the_server_once(
    engine, tmp_path, command
):
    """Only `engine serve` migrates: after an upgrade in place, the old server may still be running on the file,
    and would go on writing it as its schema says while the new code reads it as the new one says."""
    import sqlite3

    from engine.outbox import SCHEMA_VERSION

    backlog(tmp_path / "o.sqlite3").close()
    with sqlite3.connect(tmp_path / "o.sqlite3") as conn:
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION - 1}")
    run = engine("outbox", *command, env={"ENGINE_DB": str(tmp_path / "o.sqlite3")})
    assert (run.code, run.out) == (2, "")
    assert run.err == (
        f"engine: ENGINE_DB: {tmp_path / 'o.sqlite3'} has outbox schema {SCHEMA_VERSION - 1}, older than this "
        f"engine's {SCHEMA_VERSION}: start the server once (it migrates the outbox), then ask again\n"
    )
    with sqlite3.connect(tmp_path / "o.sqlite3") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION - 1


def test_status_counts_webhooks_held_for_want_of_a_mapping_by_event(engine, tmp_path):
    outbox = SqliteOutbox(tmp_path / "o.sqlite3")
    for n, event in enumerate(["call.some_future_event.v3", "message.translated", "message.translated"]):
        outbox.commit_processed(
            [Processed(stored_webhook(Webhook("call", event, 1_700_000_000, "", {"id": n})), held=True)]
        )
    outbox.close()
    env = {"ENGINE_DB": str(tmp_path / "o.sqlite3")}
    run = engine("outbox", "status", env=env)
    assert run.code == 0, run.err
    assert run.out.splitlines()[1] == (
        "held, no mapping for their event 3 (message.translated 2, call.some_future_event.v3 1)"  # most first
    )
    report = engine("outbox", "status", "--json", env=env).json()
    assert (report["unmapped"], report["unmapped_by_event"]) == (
        3,
        {"call.some_future_event.v3": 1, "message.translated": 2},
    )


def test_held_events_are_listed_ten_by_name_however_many_names_a_sender_invents(engine, tmp_path):
    outbox = SqliteOutbox(tmp_path / "o.sqlite3")
    held = [
        Processed(stored_webhook(Webhook("call", f"call.invented_{n:03d}", 1_700_000_000, "", {"id": n})), held=True)
        for n in range(150)
    ]
    extra = Webhook("call", "call.invented_007", 1_700_000_001, "", {"id": 1})
    outbox.commit_processed([*held, Processed(stored_webhook(extra), held=True)])
    stats = outbox.stats()
    assert (stats.unmapped_total, stats.unmapped_events, len(stats.unmapped)) == (151, 150, 100)
    assert next(iter(sorted(stats.unmapped.items(), key=lambda p: -p[1]))) == ("call.invented_007", 2)
    outbox.close()
    run = engine("outbox", "status", env={"ENGINE_DB": str(tmp_path / "o.sqlite3")})
    line = run.out.splitlines()[1]
    assert line.startswith("held, no mapping for their event 151 (call.invented_007 2, call.invented_000 1, ")
    assert line.endswith(" and 140 more events)")


@pytest.mark.parametrize("command", [("replay", "--dead"), ("discard",)])
def test_an_id_past_any_rows_is_a_usage_error_not_a_traceback(engine, tmp_path, command):
    backlog(tmp_path / "o.sqlite3").close()
    for given in ("99999999999999999999", "0", "-3", "x"):
        run = engine("outbox", *command, "--id", given, env={"ENGINE_DB": str(tmp_path / "o.sqlite3")})
        assert run.code == 2 and "Traceback" not in run.err
        assert f"argument --id: '{given}' is not a dead letter's id (a whole number, 1 or more)" in run.err


def test_each_postgresql_connection_problem_is_named_by_libpqs_reason_once(engine, postgres_cluster):
    """Before, all of these read "pool initialization incomplete after 3.0 sec", with the URL printed twice."""
    port = postgres_cluster.port
    closed = free_port()
    cases = {
        f"postgresql://postgres@127.0.0.1:{port}/no_such_database": 'database "no_such_database" does not exist',
        f"postgresql://nobody@127.0.0.1:{port}/postgres": 'role "nobody" does not exist',
        f"postgresql://postgres@127.0.0.1:{closed}/postgres": "Connection refused",
        "postgresql://postgres@no-such-host.invalid/postgres": "no-such-host.invalid",
        f"postgresql://postgres@127.0.0.1:{port}/postgres?sslmode=bogus": 'invalid sslmode value: "bogus"',
    }
    for url, reason in cases.items():
        run = engine("outbox", "status", env={"ENGINE_DB": url})
        assert run.code == 2 and "Traceback" not in run.err, run.err
        assert reason in run.err, (url, run.err)
        assert "pool initialization" not in run.err and run.err.count(url.split("?")[0]) == 1, run.err
        assert run.err.count("\n") == 1


def test_engine_db_naming_a_folder_or_a_bare_scheme_says_what_to_name_instead(engine, tmp_path):
    """Before: a folder was "disk I/O error", and `sqlite://` came back as "ENGINE_DB: ... ENGINE_DB: 'sqlite://'"."""
    for command in (["outbox", "status"], ["serve", "--port", str(free_port())]):
        run = engine(*command, env={"ENGINE_DB": str(tmp_path), "AIRCALL_WEBHOOK_TOKEN": "t"}, timeout=30)
        assert run.code == 2 and "Traceback" not in run.err, run.err
        assert f"{tmp_path} is a folder: name a file, such as {tmp_path / 'outbox.sqlite3'}" in run.err
        assert "disk I/O" not in run.err
        run = engine(*command, env={"ENGINE_DB": "sqlite://", "AIRCALL_WEBHOOK_TOKEN": "t"}, timeout=30)
        assert run.code == 2 and run.err.count("ENGINE_DB") == 1, run.err
        assert "neither a SQLite file (a path, or sqlite:///relative/path" in run.err


def test_a_role_without_rights_on_the_database_is_one_line_naming_the_permission(engine, postgres_cluster, tmp_path):
    """A database the role does not own (PostgreSQL 15: no CREATE on its public schema): was a traceback."""
    import psycopg

    with psycopg.connect(postgres_cluster.url(), autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS not_theirs")
        conn.execute("DROP ROLE IF EXISTS weak")
        conn.execute("CREATE ROLE weak LOGIN PASSWORD 'weakpw'")
        conn.execute("CREATE DATABASE not_theirs")
        conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")  # PostgreSQL 15's default, on older ones too
    url = f"postgresql://weak:weakpw@127.0.0.1:{postgres_cluster.port}/not_theirs"
    for command in (["outbox", "status"], ["outbox", "replay"], ["serve", "--port", str(free_port())]):
        run = engine(*command, env={"ENGINE_DB": url, "AIRCALL_WEBHOOK_TOKEN": "t"}, timeout=30)
        assert run.code == 2 and "Traceback" not in run.err, (command, run.err)
        assert run.err.count("\n") == 1 and "weakpw" not in run.err, run.err
    assert "no outbox tables" in engine("outbox", "status", env={"ENGINE_DB": url}).err
    served = engine("serve", "--port", str(free_port()), env={"ENGINE_DB": url, "AIRCALL_WEBHOOK_TOKEN": "t"})
    assert "PostgreSQL refused: permission denied for schema public (the role in ENGINE_DB needs" in served.err


def test_a_malformed_password_is_never_printed_even_when_libpq_quotes_it(engine, postgres_cluster):
    port = postgres_cluster.port
    for url, secret in [(f"postgresql://u:100%secret@127.0.0.1:{port}/db", "secret"),
                        (f"postgresql://u:S%00ECRET@127.0.0.1:{port}/db", "ECRET"),
                        (f"postgresql://u:SECRETPW@[::1:{port}/db", "SECRETPW"),
                        (f"postgresql://u:%z@127.0.0.1:{port}/db", "%z"),
                        (f"postgresql://u:pw@127.0.0.1:{port}/db?sslpassword=KeyPass99", "KeyPass99")]:  # fmt: skip
        run = engine("outbox", "status", env={"ENGINE_DB": url})
        assert run.code == 2 and secret not in run.err and "Traceback" not in run.err, run.err


def test_a_url_mistyped_with_one_slash_is_refused_not_a_sqlite_file_in_a_folder_named_after_it(engine, tmp_path):
    for setting in ("postgresql:/bridge:SECRETPW@db:5432/bridge", "file:/tmp/outbox.sqlite3", "mysql:/x"):
        env = {"ENGINE_DB": setting, "AIRCALL_WEBHOOK_TOKEN": "t", "ENGINE_MAPPINGS": str(MAPPINGS)}
        run = engine("serve", "--port", str(free_port()), cwd=tmp_path, env=env, timeout=30)
        assert run.code == 2 and "neither a SQLite file" in run.err and "SECRETPW" not in run.err, run.err
    assert list(tmp_path.iterdir()) == []  # no folder `postgresql:` made
