"""The one exception type users see as a one-line message (no traceback)."""


class EcgTraceError(Exception):
    """Bad input or a failed step; the message says what is wrong and what to do."""
