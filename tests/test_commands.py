"""Every command the `engine` script has is documented: it answers --help, and README's Commands table names it."""

from __future__ import annotations

import argparse

from engine.cli import _parser
from tests.conftest import ROOT, run_engine


def commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Each command and sub-command, as the words typed after `engine`."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((*prefix, name))
                found.extend(commands(sub, (*prefix, name)))
    return found


def test_every_command_answers_help_and_is_in_readme():
    every = commands(_parser())
    assert ("serve",) in every and ("outbox", "discard") in every  # the walk finds nested commands
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("\n## Commands\n") :]
    table = table[: table.index("\n## ", 1)]  # the Commands section alone: its table is the reference
    for words in every:
        run = run_engine(*words, "--help")
        assert run.code == 0 and run.out.startswith(f"usage: engine {' '.join(words)}"), (words, run.err)
        assert f"`engine {' '.join(words)}" in table, f"README's Commands table lacks `engine {' '.join(words)}`"
