"""Logging: structlog, one JSON object per line by default, cheap on the hot path.

`configure_logging` is called once by the CLI from the ``logging`` config keys
(``format``: json or console, ``level``, ``redactEmails``). JSON lines are rendered
with orjson straight to stdout's bytes; records of other libraries (aiohttp's own
errors) go through the same renderer. Each line has ``timestamp``, ``level`` and
``msg``, then its fields.

A line per request is the costliest thing the receiver does besides HTTP itself, so
the JSON pipeline is kept short: a timestamp formatted once per second and reused,
and lines written to a buffer of its own on stdout's file descriptor without a flush
each (a write system call per line would cost more than the rest of the line).
`flush_logs` empties the buffer; `server` calls it a few times a second and at exit,
so a line reaches stdout within a fraction of a second (a SIGKILL loses at most
that fraction). The request line
itself skips structlog's machinery (`emit`) and is rendered straight from its
fields, in the same shape.

`app` writes one line per request (`request_fields` picks the event ids, message
ids and addresses of the first few events, which `events.classify` bounds, and
`clip` cuts the other values a client chose), the sinks one per delivery. Nothing
logs a secret, a signature or a credential; with ``redactEmails`` an address is
replaced by `redact_email`'s short hash, stable so lines about one recipient can
still be matched.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import orjson
import structlog
from aiohttp.http_exceptions import HttpProcessingError

from .events import Event

_BUFFER_SIZE: Final = 64 * 1024
# Enough ids to find a request's events in a target's logs without unbounded lines.
MAX_IDS_LOGGED: Final = 5
# What a log line keeps of a value a client chose (a path, a Content-Type).
MAX_LOGGED_CHARS: Final = 200

_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def _orjson_dumps(event_dict: Any, **_: Any) -> bytes:
    return orjson.dumps(event_dict, default=str)


class _Timestamper:
    """``timestamp`` in UTC ISO 8601 with microseconds; the part up to the seconds is
    formatted once per second, not once per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1e6):06d}Z"

    def __call__(self, logger: Any, name: str, event_dict: Any) -> Any:
        event_dict["timestamp"] = self.now()
        return event_dict


_timestamper = _Timestamper()
# Set by configure_logging for JSON lines: where `emit` writes, and from which level.
_direct_write: Callable[[bytes], object] | None = None
_direct_level = logging.INFO


def emit(logger: Any, level: str, msg: str, fields: dict[str, Any]) -> None:
    """One line of ``fields`` at ``level``: the request path's log line.

    With JSON lines configured it is rendered here, as the structlog pipeline would
    render it (fields, then level, timestamp and msg), at a fraction of the cost;
    otherwise (console lines, tests capturing structlog) it goes through ``logger``.
    """
    write = _direct_write
    if write is None:
        getattr(logger, level)(msg, **fields)
        return
    if _LEVELS[level] >= _direct_level:
        fields["level"] = level
        fields["timestamp"] = _timestamper.now()
        fields["msg"] = msg
        write(orjson.dumps(fields, default=str) + b"\n")


# Our own buffer on stdout's file descriptor: sys.stdout's may be none at all
# (PYTHONUNBUFFERED=1, as container images often set, makes it a bare file).
_out: io.BufferedWriter | None = None


class _BufferedBytesLogger:
    """Writes each line to the log buffer; `flush_logs` pushes it out."""

    def __init__(self, *args: Any) -> None:
        if _out is None:  # pragma: no cover - configure_logging creates it first
            raise RuntimeError("configure_logging() was not called")
        self._write = _out.write

    def msg(self, message: bytes) -> None:
        self._write(message + b"\n")

    log = debug = info = warning = warn = error = critical = exception = msg


def flush_logs() -> None:
    """Write out buffered log lines."""
    sys.stdout.flush()
    if _out is not None:
        _out.flush()


def configure_logging(*, format: str = "json", level: str = "info") -> None:
    """Set up structlog (and the standard library's loggers) for the whole process."""
    global _direct_write, _direct_level, _out
    shared: list[Any] = [structlog.processors.add_log_level]
    renderer: Any
    _direct_write = None
    stream: Any = sys.stdout
    if format == "console":
        shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))
        # Plain tracebacks even where rich or better_exceptions is installed: those
        # print local variables, which hold request bodies, signatures and secrets.
        renderer = structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        factory: Any = structlog.WriteLoggerFactory(file=sys.stdout)
    else:
        shared.append(_timestamper)
        shared.append(structlog.processors.format_exc_info)
        shared.append(structlog.processors.EventRenamer("msg"))
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if _out is None:
            _out = io.BufferedWriter(
                io.FileIO(sys.stdout.fileno(), "wb", closefd=False), buffer_size=_BUFFER_SIZE
            )
            atexit.register(flush_logs)
        factory = _BufferedBytesLogger
        _direct_write, _direct_level = _out.write, _LEVELS[level]
        # The standard library's records go through the same buffer, so lines keep
        # their order (its handler flushes after each of its rare records).
        stream = io.TextIOWrapper(_out, encoding="utf-8", write_through=True)
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=factory,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                _text_renderer(renderer),
            ],
        )
    )
    handler.addFilter(_NoRequestInTracebacks())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(_LEVELS[level])


class _NoRequestInTracebacks(logging.Filter):
    """aiohttp logs a request it could not parse with the error's traceback, whose
    message quotes the offending line (a credential, maybe). The webhook port
    answers those itself (`connections`); this keeps any other port's from leaking:
    the record stays, its traceback goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.exc_info = None
            record.exc_text = None
            record.msg = f"{record.msg} ({type(error).__name__})"
        return True


def _text_renderer(renderer: Any) -> Any:
    # The standard library's handlers want str; the JSON renderer makes bytes.
    def render(logger: Any, name: str, event_dict: Any) -> str:
        rendered = renderer(logger, name, event_dict)
        return rendered.decode() if isinstance(rendered, bytes) else str(rendered)

    return render


def clip(text: str, limit: int = MAX_LOGGED_CHARS) -> str:
    """``text``, cut to ``limit`` characters (marked with an ellipsis) when longer."""
    return text if len(text) <= limit else text[:limit] + "\u2026"


def redact_email(address: str) -> str:
    """A short, stable stand-in for an email address."""
    digest = hashlib.sha256(address.strip().lower().encode("utf-8", "replace")).hexdigest()
    return "email:" + digest[:12]


def request_fields(events: Sequence[Event], *, redact_emails: bool) -> dict[str, list[str]]:
    """Event ids, message ids and addresses of the first few events, for a request log line."""
    head = events[:MAX_IDS_LOGGED]
    emails = [event.email for event in head if event.email]
    fields = {
        "event_ids": [event.key for event in head],
        "message_ids": [message_id for event in head if (message_id := event.message_id)],
        "emails": [redact_email(email) for email in emails] if redact_emails else emails,
    }
    return {name: values for name, values in fields.items() if values}
