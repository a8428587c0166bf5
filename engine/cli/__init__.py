"""The `engine` command. It parses arguments and prints; the work is done by the modules it calls."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from engine import __version__
from engine.cli import aircall, mappings, outbox, serve
from engine.cli.common import EXIT_USAGE, UsageError
from engine.config import ConfigError
from engine.mapping.findings import MappingsFolderError
from engine.outbox import OutboxRefused, OutboxUnavailable

EXIT_BROKEN_PIPE = 141  # what a shell reports for a command ended by SIGPIPE (128 + 13)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `engine render ... | head`: the reader has what it wanted. Python's own flush at exit would fail on the
        # same pipe and print a second error, so standard output goes nowhere from here.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except Exception as exc:
        message = user_error(exc)
        if message is None:
            raise  # a bug: its traceback is what a report needs
        print(f"engine: {message}", file=sys.stderr)
        return EXIT_USAGE


def user_error(exc: Exception) -> str | None:
    """The one line for an error caused by what the user gave (arguments, settings, files, the outbox named),
    or None. The one place where the exceptions of the layers below become what a user reads."""
    if isinstance(exc, UsageError | ConfigError | MappingsFolderError):
        return str(exc)
    if isinstance(exc, OutboxRefused):
        return f"ENGINE_DB: {exc}"
    if isinstance(exc, OutboxUnavailable):  # locked by another process past the busy timeout, disk full...
        return f"ENGINE_DB: the outbox is busy or cannot be written ({exc}); try again"
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="engine", description="Aircall webhooks to Segment, through YAML mappings.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--env-file", help="settings file read after the environment (default .env, when there is one)")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    for group in (mappings, serve, outbox, aircall):
        group.add_commands(commands)
    return parser


if __name__ == "__main__":
    sys.exit(main())
