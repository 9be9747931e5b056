"""``mailtrap-operator mailtrap list|delete``: what exists on Mailtrap's side.

For finding and removing orphans: webhooks Mailtrap still has for a resource that
is gone, or that a run of the operator created and never recorded. Both commands
take the account (``--account-id``), a file holding the API token
(``--token-file``, so the token is not in the shell history or the process list)
and the API base URL (``--api-url``, else ``$MAILTRAP_API_URL``, else
https://mailtrap.io), and print a table or, with ``-o json``, the webhooks as
Mailtrap answers them (signing secrets are never part of those answers). Any
failure prints Mailtrap's message (a 401: ``Incorrect API token``) on stderr and
exits 1; a bad flag exits 2. `cli.main` hands ``mailtrap ...`` here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final, TextIO

from .. import logs
from ..settings import api_url_argument
from .client import MailtrapClient, api_url_from
from .errors import MailtrapError
from .models import Webhook

EXIT_FAILED: Final = 1
_COLUMNS: Final = ("ID", "TYPE", "ACTIVE", "FORMAT", "STREAM", "EVENTS", "URL")


def _an_id(what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not text.strip().isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"{text!r} is not {what} (a positive number)")
        return int(text)

    return parse


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--account-id", type=_an_id("an account id"), required=True, help="Mailtrap account"
    )
    common.add_argument(
        "--token-file", type=Path, required=True, help="file holding the Mailtrap API token"
    )
    common.add_argument(
        "--api-url",
        type=api_url_argument,
        default=api_url_from(os.environ),
        help="Mailtrap API base URL (default: $MAILTRAP_API_URL, else %(default)s)",
    )
    common.add_argument(
        "-o", "--output", choices=("table", "json"), default="table", help="output format"
    )
    parser = argparse.ArgumentParser(
        prog="mailtrap-operator mailtrap",
        description="What exists on Mailtrap's side: list webhooks, delete an orphan.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("list", parents=[common], help="list the account's webhooks")
    delete = sub.add_parser("delete", parents=[common], help="delete one webhook")
    delete.add_argument(
        "webhook_id", metavar="ID", type=_an_id("a webhook id"), help="the webhook's id"
    )
    return parser


def read_token(path: Path) -> str:
    """The API token in ``path``: its first non-blank line."""
    for line in path.read_text().splitlines():
        if line.strip():
            return line.strip()
    raise ValueError(f"{path} holds no token")


def print_table(webhooks: Sequence[Webhook], *, out: TextIO) -> None:
    rows = [_COLUMNS] + [
        (
            str(hook.id),
            hook.webhook_type,
            "true" if hook.active else "false",
            hook.payload_format,
            hook.sending_stream or "-",
            ",".join(hook.event_types) or "-",
            hook.url,
        )
        for hook in webhooks
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(len(_COLUMNS))]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip(), file=out)


async def _run(args: argparse.Namespace, token: str) -> list[Webhook]:
    async with MailtrapClient(account_id=args.account_id, token=token, api_url=args.api_url) as api:
        if args.command == "delete":
            return [await api.delete_webhook(args.webhook_id)]
        return await api.list_webhooks()


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    args = build_parser().parse_args(argv)
    # Only problems are worth a line here; stdout is for the answer.
    logs.configure(log_format="console", level="warning")
    try:
        token = read_token(args.token_file)
    except (OSError, ValueError) as error:
        print(f"mailtrap-operator mailtrap: cannot read the token: {error}", file=sys.stderr)
        return EXIT_FAILED
    try:
        webhooks = asyncio.run(_run(args, token))
    except MailtrapError as error:
        print(f"mailtrap-operator mailtrap {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED
    if args.output == "json":
        data = [hook.wire() for hook in webhooks]
        print(json.dumps(data[0] if args.command == "delete" else data, indent=2), file=out)
    elif args.command == "delete":
        hook = webhooks[0]
        print(f"deleted webhook {hook.id} ({hook.webhook_type}, {hook.url})", file=out)
    else:
        print_table(webhooks, out=out)
    return 0
