from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
FIXTURES = ROOT / "tests" / "fixtures"
ENGINE = Path(sys.executable).parent / "engine"  # the console script, as a user runs it


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


# Commands whose process is the point (uvicorn, signals, ports): run as a user runs them. The others run
# in-process through the same main(), which saves the interpreter's start and the imports (0.3 s a call).
IN_A_PROCESS_OF_THEIR_OWN = frozenset({"serve"})


def run_engine(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, stdin: bytes | None = None, timeout: float = 60
) -> Run:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AIRCALL_", "SEGMENT_", "ENGINE_"))}
    environment.update(env or {})
    if IN_A_PROCESS_OF_THEIR_OWN & set(args) or os.environ.get("ENGINE_TESTS_SPAWN_CLI"):
        return spawn_engine(*args, cwd=cwd, env=environment, stdin=stdin, timeout=timeout)
    return _in_process(list(args), cwd, environment, stdin)


def spawn_engine(*args: str, cwd: Path, env: dict[str, str], stdin: bytes | None = None, timeout: float = 60) -> Run:
    done = subprocess.run([str(ENGINE), *args], cwd=cwd, env=env, input=stdin, capture_output=True, timeout=timeout)
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


def _in_process(argv: list[str], cwd: Path, environment: dict[str, str], stdin: bytes | None) -> Run:
    """`engine ARGV` as the console script runs it, in this process: its environment, folder, standard streams
    and exit code; an exception that escapes main() is a traceback on stderr and exit 1, as in a process."""
    from engine.cli import main

    saved_environ, saved_cwd = dict(os.environ), os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    out, err = io.BytesIO(), io.BytesIO()
    # Held here: a wrapper dropped when the streams are restored would close its buffer before it is read.
    streams = (
        io.TextIOWrapper(io.BytesIO(stdin or b""), encoding="utf-8"),
        io.TextIOWrapper(out, encoding="utf-8", write_through=True),
        io.TextIOWrapper(err, encoding="utf-8", write_through=True),
    )
    sys.stdin, sys.stdout, sys.stderr = streams
    os.environ.clear()
    os.environ.update(environment)
    try:
        os.chdir(cwd)
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse: --help, usage errors
            code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        except Exception:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environ)
    result = Run(code, out.getvalue().decode(), err.getvalue().decode())
    for stream in streams:
        stream.detach()
    return result


@pytest.fixture
def engine():
    return run_engine


@pytest.fixture
def mappings_copy(tmp_path: Path) -> Path:
    """A writable copy of the shipped mappings, with the sample webhooks beside it as in the repository."""
    target = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, target)
    shutil.copytree(FIXTURES, tmp_path / "tests" / "fixtures")
    return target


def fixture_paths() -> list[Path]:
    return sorted(FIXTURES.glob("*.json"))


# -- real processes: the fake Segment (one per session, reset for each test) and `engine serve` ---------------


@pytest.fixture(scope="session")
def segment_process(tmp_path_factory):
    from tests.harness import FakeSegment

    fake = FakeSegment(tmp_path_factory.mktemp("segment"))
    yield fake
    fake.stop()


@pytest.fixture
def segment(segment_process):
    segment_process.control(reset=True)
    return segment_process


@pytest.fixture(scope="module")
def aircall_process(tmp_path_factory):
    """The fake Aircall REST API (tests/fake_aircall.py), one per test module."""
    from tests.harness import FakeAircall

    fake = FakeAircall(tmp_path_factory.mktemp("aircall"))
    yield fake
    fake.stop()


@pytest.fixture
def aircall(aircall_process):
    """The fake Aircall API, emptied for the test: one number, a quota of 1,000 requests a minute."""
    aircall_process.control(reset=True, limit=1000, window=60)
    return aircall_process


@pytest.fixture
def engine_server(tmp_path, segment):
    """start(workers=1, with_segment=True, **settings) -> a running `engine serve`, stopped after the test."""
    from tests.harness import Engine

    servers: list[Engine] = []

    def start(workers: int = 1, with_segment: bool = True, wait: bool = True, **settings: str) -> Engine:
        server = Engine(tmp_path, segment if with_segment else None, **settings).start(workers, wait=wait)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from tests.harness import FIGURES

    if FIGURES:
        terminalreporter.write_sep("-", "reliability figures")
        for name, value in sorted(FIGURES.items()):
            terminalreporter.write_line(f"{name}: {value:g}")


@pytest.fixture(scope="session")
def postgres_cluster():
    """A PostgreSQL server of the tests' own, or a skip that says why there is none."""
    from tests.postgres import Cluster

    try:
        cluster = Cluster()
    except (FileNotFoundError, OSError) as exc:
        pytest.skip(f"no PostgreSQL to test against: {exc}")
    yield cluster
    cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster) -> str:
    """A fresh, empty database on the test cluster."""
    return postgres_cluster.new_database()


@pytest.fixture(params=["sqlite", "postgres"])
def outbox(request, tmp_path):
    """The same outbox contract on each backend: SQLite in a new file (in a folder it creates), PostgreSQL in a
    fresh database."""
    from engine.outbox import SqliteOutbox, open_outbox

    if request.param == "postgres":
        store = open_outbox(request.getfixturevalue("postgres_url"))
    else:
        store = SqliteOutbox(tmp_path / "var" / "outbox.sqlite3")
    yield store
    store.close()
