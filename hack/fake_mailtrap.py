"""Mailtrap's Webhooks API and webhook sender, faked on 127.0.0.1, until SIGTERM.

    python hack/fake_mailtrap.py --port N --account-id ID --token-file F

The fake itself is tests/helpers/fake_mailtrap.py (its docstring documents the API,
the sender and the ``/_fake`` control API); this is its entry point as a process,
for ``make dev``, benchmarks and tests that run the operator against it. The token
file holds the API tokens the fake accepts, one per line. Point the operator at it
with ``MAILTRAP_API_URL=http://127.0.0.1:N``.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import signal
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests/helpers, which the fake shares with the tests

from tests.helpers.fake_mailtrap import FakeMailtrap, SenderPolicy  # noqa: E402


def _loopback(text: str) -> str:
    if not ipaddress.ip_address(text).is_loopback:
        raise argparse.ArgumentTypeError("the fake listens on loopback (127.0.0.0/8) only")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument("--host", type=_loopback, default="127.0.0.1", help="loopback address")
    parser.add_argument("--account-id", type=int, required=True, help="the account's id")
    parser.add_argument(
        "--token-file", type=Path, required=True, help="API tokens it accepts, one per line"
    )
    parser.add_argument("--rate-limit", type=int, default=150, help="requests per window")
    parser.add_argument("--rate-window", type=float, default=10.0, help="seconds")
    parser.add_argument(
        "--retry-attempts", type=int, default=41, help="sender attempts per batch (Mailtrap: 41)"
    )
    parser.add_argument(
        "--retry-delay", type=float, default=300.0, help="seconds between attempts (Mailtrap: 300)"
    )
    parser.add_argument(
        "--send-timeout", type=float, default=30.0, help="seconds a POST may take (Mailtrap: 30)"
    )
    return parser


async def serve(args: argparse.Namespace) -> None:
    tokens = args.token_file.read_text().splitlines()
    fake = FakeMailtrap(
        account_id=args.account_id,
        tokens=tokens,
        rate_limit=args.rate_limit,
        rate_window=args.rate_window,
        sender=SenderPolicy(
            attempts=args.retry_attempts, delay=args.retry_delay, timeout=args.send_timeout
        ),
        host=args.host,
        port=args.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with fake:
        print(f"fake Mailtrap API for account {args.account_id} at {fake.url}", flush=True)
        await stop.wait()
    print("fake Mailtrap stopped", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        asyncio.run(serve(args))
    except (OSError, ValueError) as error:
        print(f"fake_mailtrap: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
