"""`engine serve`: the settings, mappings and outbox checked here, then uvicorn."""

from __future__ import annotations

import argparse
import errno
import os
import socket
import sys

from engine import logs
from engine.cli.common import (
    EXIT_OK,
    UsageError,
    open_outbox_for,
    settings_for,
)
from engine.config import FIRST_RUN_CONSOLE_TOKEN, is_loopback
from engine.mapping.findings import MappingError
from engine.server import metrics
from engine.server.runtime import load_server_mappings


def add_commands(commands: argparse._SubParsersAction) -> None:
    serve = commands.add_parser("serve", help="run the webhook server (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="server processes sharing the outbox (default 1)")
    serve.add_argument(
        "--forwarded-allow-ips",
        default="127.0.0.1",
        help="proxies whose X-Forwarded-* headers are trusted (default 127.0.0.1: a proxy on this machine)",
    )
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    settings = settings_for(args)
    try:  # the same checks as the server's start-up, to fail here with a plain message and exit 2
        load_server_mappings(settings)
    except MappingError as exc:
        for finding in exc.findings:
            print(finding, file=sys.stderr)
        raise UsageError(f"the mappings in {settings.mappings_dir} have problems; run `engine validate`") from None
    if settings.console_token == FIRST_RUN_CONSOLE_TOKEN and not is_loopback(args.host):
        raise UsageError(
            "ENGINE_CONSOLE_TOKEN: README's first-run token is public, fit for this machine only; set your own "
            f"(`openssl rand -hex 16` makes one) before listening on {args.host}"
        )
    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    if not 1 <= args.port <= 65535:  # uvicorn would bind the port modulo 65536 and log the number given
        raise UsageError(f"--port: {args.port} is not a port (1 to 65535)")
    # Before the outbox is migrated: a server still running on the port is most likely an older version on the
    # same outbox, which would go on writing it the old way.
    _check_port_free(args.host, args.port)
    # The outbox too (created or migrated here, once for all the workers): one that is refused is refused here.
    open_outbox_for(args, create=True, migrate=True).close()
    # The workers read the settings themselves, from the file named here (or .env).
    if args.env_file:
        os.environ["ENGINE_ENV_FILE"] = args.env_file
    else:
        os.environ.pop("ENGINE_ENV_FILE", None)
    chosen = os.environ.get(metrics.MULTIPROCESS_DIR_VARIABLE)
    if chosen and not os.path.isdir(chosen):
        raise UsageError(
            f"{metrics.MULTIPROCESS_DIR_VARIABLE}: {chosen!r} is not a folder; create it (empty) or unset it"
        )
    with metrics.shared_across_workers(args.workers):
        uvicorn.run(
            "engine.server.app:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            proxy_headers=True,
            forwarded_allow_ips=args.forwarded_allow_ips,
            timeout_graceful_shutdown=30,
            log_config=logs.uvicorn_log_config(settings.log_format),
            log_level=settings.log_level,
        )
    return EXIT_OK


def _check_port_free(host: str, port: int) -> None:
    """UsageError when uvicorn could not listen on host:port now (it would say so only after the start-up): every
    address the host names, each socket IPv4 or IPv6 only, as uvicorn binds them."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(f"--host: {host!r} is not an address of this machine ({exc.strerror})") from None
    except (UnicodeError, ValueError):  # a name the IDNA codec refuses: an empty or overlong label
        raise UsageError(f"--host: {host!r} is not a host name or an address") from None
    for family, kind, proto, _, address in addresses:
        _try_bind(host, port, family, kind, proto, address)


def _try_bind(host: str, port: int, family: int, kind: int, proto: int, address: tuple[object, ...]) -> None:
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            setting, advice = {
                errno.EADDRINUSE: ("--port", "is a server already running there?"),
                errno.EACCES: ("--port", "ports below 1024 need root or CAP_NET_BIND_SERVICE"),
                errno.EADDRNOTAVAIL: ("--host", "not an address of this machine"),
            }.get(exc.errno or 0, ("--host", "check the address and port"))
            raise UsageError(f"{setting}: cannot listen on {host}:{port}: {exc.strerror} ({advice})") from None
