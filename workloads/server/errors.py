"""Errors that become HTTP responses: status, a message naming the bad value, and what was expected.

One exception type for every client mistake keeps the handlers flat: decoding code raises, the connection
turns it into a JSON body (``{"error": ..., "expected": ...}``) and a 4xx status, and the server keeps going.
"""

from __future__ import annotations


class HttpError(Exception):
    """A request the server refuses; ``close`` ends the connection (the byte stream can no longer be trusted)."""

    def __init__(
        self,
        status: int,
        message: str,
        expected: str | None = None,
        *,
        close: bool = False,
        headers: tuple[tuple[str, str], ...] = (),
        path: bytes = b"",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.expected = expected
        self.close = close
        self.headers = headers
        self.path = path  # the request path when the head was parsed, for the metrics' route label


class ModelLoadError(Exception):
    """The model cannot be served; ``exit_code`` says whether retrying could help (see ``config.EXIT_*``)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code
