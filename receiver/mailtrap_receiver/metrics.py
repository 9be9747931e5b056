"""Every Prometheus metric of the receiver, in one place.

`Metrics` creates them all in its own `CollectorRegistry`, so each app (and each
test) has a private set; the admin app serves it on ``/metrics``. Names carry the
``mailtrap_webhook_`` prefix and labels take only bounded values: HTTP status codes,
canonical event names (``events.CANONICAL_EVENTS``), fixed reason codes and
configured target names; never an event id, address or path.

Request-side metrics are filled by `app`; the delivery-side ones by `sinks.post`
(every request to a target) and, in ack mode ``durable``, by `delivery` (queue depth
and oldest pending age about once a second, dead letters once they are stored).
Hot-path code calls the small methods here, which keep label children in plain
dicts so a request does not pay prometheus-client's label lookup.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from .events import CANONICAL_EVENTS, INVALID_REASONS

PREFIX: Final = "mailtrap_webhook_"
CONTENT_TYPE: Final = CONTENT_TYPE_LATEST

# Reasons of auth_failures_total, all of them: app.py refuses with the source and
# signature ones, auth.BasicAuth.failure names the basic-auth ones.
AUTH_FAILURE_REASONS: Final = (
    "source_not_allowed",
    "basic_auth_missing",
    "basic_auth_invalid",
    "signature_missing",
    "signature_invalid",
)
# Reasons of refused_total: the limits of the webhook port (`connections`, `intake`,
# `parsing`, `app`), each an error code of the answer (or of a connection closed
# without one).
REFUSAL_REASONS: Final = (
    "header_timeout",
    "connection_limit",
    "malformed_request",
    "body_too_large",
    "body_timeout",
    "body_too_slow",
    "source_busy",
    "receiver_busy",
    "too_many_requests",
    "too_many_events",
    "nesting_too_deep",
    "dead_letters_full",
)
# Outcomes of deliveries_total: the target answered 2xx, answered something else, or
# could not be reached (connection error or timeout).
DELIVERY_OUTCOMES: Final = ("delivered", "rejected", "error")

_REQUEST_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# From seconds (direct delivery) to beyond a day (Mailtrap's own retries, our spool).
_LAG_BUCKETS: Final = (1, 5, 15, 30, 60, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600, 86400, 172800)


class Metrics:
    """The receiver's metrics in a registry of their own."""

    def __init__(self, *, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        r = self.registry
        self.requests = Counter(
            PREFIX + "requests_total",
            "Webhook requests answered, by HTTP status code.",
            ["code"],
            registry=r,
        )
        self.request_duration = Histogram(
            PREFIX + "request_duration_seconds",
            "Time to answer a webhook request.",
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.events_received = Counter(
            PREFIX + "events_received_total",
            "Valid events received and taken (duplicates included; a request answered "
            "429 or 503 is counted when sent again), by canonical event type.",
            ["event"],
            registry=r,
        )
        self.auth_failures = Counter(
            PREFIX + "auth_failures_total",
            "Requests refused by a gate, by reason.",
            ["reason"],
            registry=r,
        )
        self.refused_total = Counter(
            PREFIX + "refused_total",
            "Requests and connections refused by a limit of the webhook port, by reason "
            "(the error code answered, or the reason a connection was closed).",
            ["reason"],
            registry=r,
        )
        self.open_connections = Gauge(
            PREFIX + "open_connections",
            "Connections open on the webhook port.",
            registry=r,
        )
        self.arriving_body_bytes = Gauge(
            PREFIX + "arriving_body_bytes",
            "Bytes that the bodies still arriving count against limits.maxBodyMemory.",
            registry=r,
        )
        self.duplicates = Counter(
            PREFIX + "duplicates_total",
            "Events already seen within the de-duplication window.",
            registry=r,
        )
        self.invalid_events = Counter(
            PREFIX + "invalid_events_total",
            "Events that failed validation and went to the dead-letter store, by reason.",
            ["reason"],
            registry=r,
        )
        self.deliveries = Counter(
            PREFIX + "deliveries_total",
            "Requests to targets, by target and outcome (delivered, rejected, error).",
            ["target", "outcome"],
            registry=r,
        )
        self.delivery_duration = Histogram(
            PREFIX + "delivery_duration_seconds",
            "Time of one request to a target.",
            ["target"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            PREFIX + "queue_depth",
            "Events waiting for delivery, by target.",
            ["target"],
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            PREFIX + "oldest_pending_age_seconds",
            "Age of the oldest event waiting for delivery, by target.",
            ["target"],
            registry=r,
        )
        self.dead_letters = Counter(
            PREFIX + "dead_letters_total",
            "Events given up on and kept in the dead-letter store, by target and reason "
            "(attempts_exhausted, rejected, egress_denied, target_removed).",
            ["target", "reason"],
            registry=r,
        )
        self.store_writable = Gauge(
            PREFIX + "store_writable",
            "1 while the spool can be written, 0 while its writes fail (a full disk, say; "
            "/readyz fails meanwhile). Durable mode.",
            registry=r,
        )
        self.store_writable.set(1)
        self.spool_corruptions_total = Counter(
            PREFIX + "spool_corruptions",
            "Times the spool was found damaged: at start (then moved aside and what is "
            "readable recovered) or while running (then the receiver fails its probes, "
            "so a restart recovers it). Durable mode.",
            registry=r,
        )
        self.dead_letters_stored = Gauge(
            PREFIX + "dead_letters_stored",
            "Dead letters kept in the spool (at most delivery.maxDeadLetters; durable mode).",
            registry=r,
        )
        self.dead_letters_expired_total = Counter(
            PREFIX + "dead_letters_expired",
            "Dead letters deleted after delivery.deadLetterRetention.",
            registry=r,
        )
        self.dead_letters_held_total = Counter(
            PREFIX + "dead_letters_held",
            "Events a target gave up on that stayed pending (tried again later) because "
            "the dead-letter store was full, by target.",
            ["target"],
            registry=r,
        )
        self.end_to_end_lag = Histogram(
            PREFIX + "end_to_end_lag_seconds",
            "From an event's own timestamp to its acknowledgement by a target.",
            ["target"],
            buckets=_LAG_BUCKETS,
            registry=r,
        )
        # Children created up front: series exist at zero from the first scrape, and
        # the hot path finds them in a dict.
        self._requests: dict[int, Counter] = {}
        self._events: dict[str, Counter] = {
            name: self.events_received.labels(name) for name in CANONICAL_EVENTS
        }
        self._auth = {reason: self.auth_failures.labels(reason) for reason in AUTH_FAILURE_REASONS}
        self._refused = {reason: self.refused_total.labels(reason) for reason in REFUSAL_REASONS}
        self._invalid: dict[str, Counter] = {
            reason: self.invalid_events.labels(reason) for reason in INVALID_REASONS
        }
        self._deliveries: dict[tuple[str, str], Counter] = {}
        self._targets: dict[str, tuple[Histogram, Histogram]] = {}
        self._queues: dict[str, tuple[Gauge, Gauge]] = {}
        self._dead_letters: dict[tuple[str, str], Counter] = {}

    def observe_request(self, code: int, seconds: float) -> None:
        child = self._requests.get(code)
        if child is None:
            child = self._requests[code] = self.requests.labels(str(code))
        child.inc()
        self.request_duration.observe(seconds)

    def event_received(self, name: str, count: int = 1) -> None:
        self._events[name].inc(count)

    def auth_failed(self, reason: str) -> None:
        self._auth[reason].inc()

    def refused(self, reason: str) -> None:
        self._refused[reason].inc()

    def duplicates_seen(self, count: int) -> None:
        if count:
            self.duplicates.inc(count)

    def invalid_event(self, reason: str) -> None:
        self._invalid[reason].inc()

    def add_target(self, target: str) -> None:
        """Create a target's series so they read zero before its first delivery."""
        for outcome in DELIVERY_OUTCOMES:
            self._deliveries[(target, outcome)] = self.deliveries.labels(target, outcome)
        self._targets[target] = (
            self.delivery_duration.labels(target),
            self.end_to_end_lag.labels(target),
        )
        self._queues[target] = (
            self.queue_depth.labels(target),
            self.oldest_pending_age.labels(target),
        )
        for gauge in self._queues[target]:
            gauge.set(0)

    def delivery(self, target: str, outcome: str, seconds: float) -> None:
        self._deliveries[(target, outcome)].inc()
        self._targets[target][0].observe(seconds)

    def lag(self, target: str, seconds: float) -> None:
        self._targets[target][1].observe(seconds)

    def dead_letter(self, target: str, reason: str, count: int = 1) -> None:
        child = self._dead_letters.get((target, reason))
        if child is None:
            child = self._dead_letters[(target, reason)] = self.dead_letters.labels(target, reason)
        child.inc(count)

    def dead_letters_held(self, target: str, count: int) -> None:
        self.dead_letters_held_total.labels(target).inc(count)

    def dead_letters_expired(self, count: int) -> None:
        self.dead_letters_expired_total.inc(count)

    def pending(self, target: str, *, depth: int, oldest_age: float) -> None:
        """A target's queue, as the durable sink last saw it."""
        depth_gauge, age_gauge = self._queues[target]
        depth_gauge.set(depth)
        age_gauge.set(oldest_age)

    def render(self) -> bytes:
        """The text exposition format, for ``/metrics``."""
        return generate_latest(self.registry)


def metric_names(metrics: Metrics) -> list[str]:
    """Names of every metric as exposed (counters with ``_total``), for docs and tests."""
    return [
        family.name + ("_total" if family.type == "counter" else "")
        for family in metrics.registry.collect()
    ]
