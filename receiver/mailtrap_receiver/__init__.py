"""The Mailtrap webhook receiver.

It accepts Mailtrap's signed webhook requests, verifies and parses them,
de-duplicates events by ``event_id`` and hands them to a sink that forwards them
to in-cluster targets. ``cli`` is the entry point (``mailtrap-receiver``).
"""

from importlib.metadata import PackageNotFoundError, version

# pyproject.toml holds the one version; the chart's version and appVersion follow it
# (tests/unit/test_chart.py, `make chart`).
try:
    __version__ = version("mailtrap-webhook-operator")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"
