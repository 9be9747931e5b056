"""Logging for the operator: kopf's standard-library records and ours, in one format.

`cli` calls `configure` once. JSON (the default) gives one object per line in
the receiver's schema (`mailtrap_receiver.logs`): ``timestamp`` (UTC, ISO 8601),
``level`` and the message under ``msg``, then the fields: here the logger and, for
kopf's per-object loggers, the namespace, name and kind of the object. One schema
lets a log pipeline parse both programs with one rule. Console is for people. Our
modules log through structlog with key-value fields. Secret values are never
logged: the operator never holds them (it learns only which keys a Secret has).
"""

from __future__ import annotations

import logging
import sys

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger


def _kopf_object(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    # kopf attaches the object a message is about as ``k8s_ref`` on the record.
    record = event_dict.get("_record")
    ref = getattr(record, "k8s_ref", None)
    if isinstance(ref, dict):
        for key in ("namespace", "name", "kind"):
            if ref.get(key):
                event_dict.setdefault(key, ref[key])
    return event_dict


def configure(*, log_format: str, level: str) -> None:
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _kopf_object,
    ]
    renderer: Processor
    rename: list[Processor] = []
    if log_format == "console":
        # Plain tracebacks even where rich or better_exceptions is installed: those
        # print local variables, which may hold Secret data being checked.
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )
    else:
        renderer = structlog.processors.JSONRenderer()
        rename = [structlog.processors.EventRenamer("msg")]
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            *rename,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Connection-level chatter says nothing about resources, and kopf's "handler
    # succeeded" lines repeat our own one line per reconcile (below debug).
    for noisy in ("aiohttp.access", "urllib3", "kubernetes", "kopf"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
