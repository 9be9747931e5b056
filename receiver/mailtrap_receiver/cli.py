"""Command line of ``mailtrap-receiver``: ``serve`` runs the receiver, the other
subcommands are tools for users (``send-test``) and operators of the spool."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise SystemExit(f"{args.command}: not implemented yet")
