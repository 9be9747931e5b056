"""Command line of ``mailtrap-receiver`` (also ``python -m mailtrap_receiver``).

- ``serve --config FILE [--host H] [--port N] [--metrics-port N]`` runs the receiver
  (`server.run`) on a config file (`config.load_config`); a config problem prints
  each bad key and exits 2 before anything listens.
- ``send-test --url URL --secret-file F [--event TYPE] [--format json|jsonl|form]``
  sends signed sample events (`sendtest`), prints the answer, and exits 0 on 2xx.

The spool's tools (``dlq``) join here with the durable delivery stage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, cast

import aiohttp

from .config import ConfigError, load_config
from .events import CANONICAL_EVENTS, EventName
from .logs import configure_logging
from .sendtest import CONTENT_TYPES, BodyFormat, read_signing_secret, send_test

EXIT_CONFIG: Final = 2
EXIT_FAILED: Final = 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailtrap-receiver",
        description="Receive, verify and forward Mailtrap email-event webhooks.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the webhook receiver")
    serve.add_argument("--config", required=True, help="config file (YAML or JSON)")
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on")  # noqa: S104
    serve.add_argument("--port", type=int, default=8080, help="webhook port")
    serve.add_argument("--metrics-port", type=int, default=9090, help="health/metrics port")

    send = sub.add_parser(
        "send-test", help="send signed sample events, like Mailtrap's Run Test button"
    )
    send.add_argument("--url", required=True, help="webhook URL of the receiver")
    send.add_argument(
        "--secret-file", required=True, type=Path, help="file holding the signing secret"
    )
    send.add_argument(
        "--event",
        choices=CANONICAL_EVENTS,
        help="send one event of this type (default: one of each sending type)",
    )
    send.add_argument("--format", choices=sorted(CONTENT_TYPES), default="json", help="body format")
    send.add_argument("--timeout", type=float, default=10.0, help="seconds to wait")
    return parser


def _serve(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as error:
        _print_config_error(args.config, error)
        return EXIT_CONFIG
    configure_logging(format=config.logging.format, level=config.logging.level)
    # Imported here: send-test should not pay for the server's imports.
    from .server import run

    try:
        run(config=config, host=args.host, port=args.port, metrics_port=args.metrics_port)
    except ConfigError as error:  # secret files are read when the app is built
        _print_config_error(args.config, error)
        return EXIT_CONFIG
    return 0


def _print_config_error(path: str, error: ConfigError) -> None:
    print(f"mailtrap-receiver: invalid config {path}:", file=sys.stderr)
    for key, message in error.problems:
        print(f"  {key}: {message}", file=sys.stderr)


def _send_test(args: argparse.Namespace) -> int:
    try:
        secret = read_signing_secret(args.secret_file)
    except (OSError, ValueError) as error:
        print(f"mailtrap-receiver: cannot read the secret: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        status, text = asyncio.run(
            send_test(
                url=args.url,
                secret=secret,
                event=cast(EventName | None, args.event),
                body_format=cast(BodyFormat, args.format),
                request_timeout=args.timeout,
            )
        )
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
        print(f"mailtrap-receiver: request failed: {error!r}", file=sys.stderr)
        return EXIT_FAILED
    print(f"HTTP {status}")
    print(text)
    return 0 if 200 <= status < 300 else EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    return _send_test(args)
