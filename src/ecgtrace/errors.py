"""The one exception type users see as a one-line message (no traceback)."""


class EcgTraceError(Exception):
    """Bad input or a failed step; the message says what is wrong and what to do."""


class StageError(EcgTraceError):
    """A stage could not do its job on this image (or the image is no picture); the message says why and what to try."""
