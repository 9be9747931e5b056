"""The MailtrapWebhook operator.

kopf handlers that reconcile ``MailtrapWebhook`` resources into receiver
Deployments and their companions. ``cli`` is the entry point (``mailtrap-operator``).
"""

__version__ = "0.1.0"
