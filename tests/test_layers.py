"""What each stage loads: storage and delivery never the mapping language (Jinja) nor the schemas (jsonschema).

A delivery worker or an `engine outbox` command that imported Jinja would pay its start-up for nothing, and a
module that reaches across stages is where the next change has to touch two folders.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

STAGE_MODULES = ["engine.outbox.sqlite", "engine.outbox.committer", "engine.segment.delivery", "engine.segment.client",
                 "engine.values"]  # fmt: skip


@pytest.mark.parametrize("module", STAGE_MODULES)
def test_storage_and_delivery_load_neither_jinja_nor_jsonschema(module):
    program = f"import sys, {module}; print(sorted(m for m in ('jinja2', 'jsonschema') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"{module} loads {done.stdout.strip()}"
