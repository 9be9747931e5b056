"""Command line of ``mailtrap-operator``: parses settings and runs kopf with our handlers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="mailtrap-operator",
        description="Reconcile MailtrapWebhook resources into webhook receivers.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    raise SystemExit("the operator is not implemented yet")
