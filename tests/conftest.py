from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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


def run_engine(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, stdin: bytes | None = None) -> Run:
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("AIRCALL_", "SEGMENT_", "ENGINE_"))}
    environment.update(env or {})
    done = subprocess.run([str(ENGINE), *args], cwd=cwd, env=environment, input=stdin, capture_output=True, timeout=60)
    return Run(done.returncode, done.stdout.decode(), done.stderr.decode())


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
