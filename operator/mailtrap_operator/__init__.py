"""The MailtrapWebhook operator.

kopf handlers that reconcile ``MailtrapWebhook`` resources into receiver
Deployments and their companions. ``cli`` is the entry point (``mailtrap-operator``).
"""

from importlib.metadata import PackageNotFoundError, version

# pyproject.toml holds the one version; the chart's version and appVersion follow it
# (tests/unit/test_chart.py, `make chart`).
try:
    __version__ = version("mailtrap-webhook-operator")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0.0.0+unknown"
