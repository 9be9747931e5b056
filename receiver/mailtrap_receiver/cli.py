"""Command line of ``mailtrap-receiver`` (also ``python -m mailtrap_receiver``).

- ``serve --config FILE [--host H] [--port N] [--metrics-port N]`` runs the receiver
  (`server.run`) on a config file (`config.load_config`); a config problem prints
  each bad key and exits 2 before anything listens.
- ``send-test --url URL --secret-file F [--event TYPE] [--format json|jsonl|form]``
  sends signed sample events (`sendtest`), prints the answer, and exits 0 on 2xx.
- ``dlq list|replay|purge --spool PATH [--target NAME] [--id N]...`` works on the
  dead letters of a spool file (`dlq`), also while a receiver serves from it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final, cast

import aiohttp

from . import dlq
from .config import ConfigError, load_config
from .events import CANONICAL_EVENTS, EventName
from .logs import configure_logging
from .sendtest import CONTENT_TYPES, BodyFormat, read_signing_secret, send_test
from .spoolfile import SpoolError

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

    dlq = sub.add_parser("dlq", help="list, replay or purge the dead letters of a spool")
    dlq_commands = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    for name, help_text in (
        ("list", "print dead letters (oldest first)"),
        ("replay", "move dead letters back to pending for their target, attempts reset"),
        ("purge", "delete dead letters"),
    ):
        action = dlq_commands.add_parser(name, help=help_text)
        action.add_argument("--spool", required=True, help="the spool file (delivery.spoolPath)")
        action.add_argument("--target", help="only this target's dead letters")
        action.add_argument(
            "--id", type=int, action="append", dest="ids", help="only this letter (repeatable)"
        )
        if name == "list":
            action.add_argument("--json", action="store_true", help="print a JSON array")
            action.add_argument("--limit", type=int, help="only the newest N")
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
    except SpoolError as error:
        print(f"mailtrap-receiver: {error}", file=sys.stderr)
        return EXIT_FAILED
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
    if args.command == "dlq":
        return dlq.run(
            command=args.dlq_command,
            spool=args.spool,
            target=args.target,
            ids=args.ids,
            as_json=getattr(args, "json", False),
            limit=getattr(args, "limit", None),
        )
    return _send_test(args)
