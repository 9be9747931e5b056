"""The Mailtrap webhook receiver.

It accepts Mailtrap's signed webhook requests, verifies and parses them,
de-duplicates events by ``event_id`` and hands them to a sink that forwards them
to in-cluster targets. ``cli`` is the entry point (``mailtrap-receiver``).
"""

__version__ = "0.1.0"
