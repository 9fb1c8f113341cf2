"""Exceptions that plugins raise to tell the runner how to treat a failure."""

__all__ = ["PermanentError"]


class PermanentError(Exception):
    """Trying again cannot help (bad input, exhausted quota, rejected credentials).

    The call is recorded as failed for good and not retried; the event becomes a dead
    letter once nothing else about it can be retried.
    """
