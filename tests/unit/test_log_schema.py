"""Both programs write JSON log lines in one schema: ``timestamp``, ``level``, ``msg``.

A log pipeline (Loki, Elasticsearch, a fluent-bit parser) then needs one rule for
the operator and the receivers. Each program's logging is configured in a process
of its own, as the console scripts do, and a structlog line and a standard-library
line (kopf's, aiohttp's) are compared.
"""

from __future__ import annotations

import re
import subprocess
import sys

import orjson
import pytest

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z")

CONFIGURE = {
    "receiver": "from mailtrap_receiver.logs import configure_logging as c\n"
    "c(format='json', level='info')\n",
    "operator": "from mailtrap_operator.logs import configure as c\n"
    "c(log_format='json', level='info')\n",
}


def json_lines(program: str) -> list[dict[str, object]]:
    code = (
        CONFIGURE[program] + "import logging, structlog\n"
        "structlog.get_logger('x').info('from structlog', n=1)\n"
        "logging.getLogger('kopf.objects').error('from the stdlib')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return [orjson.loads(line) for line in done.stdout.splitlines()]


@pytest.mark.parametrize("program", ["receiver", "operator"])
def test_json_lines_have_the_shared_schema(program: str) -> None:
    lines = json_lines(program)
    assert [line["msg"] for line in lines] == ["from structlog", "from the stdlib"]
    assert [line["level"] for line in lines] == ["info", "error"]
    for line in lines:
        assert "event" not in line  # the message lives under msg only
        assert TIMESTAMP.fullmatch(str(line["timestamp"])), line
    assert lines[0]["n"] == 1
