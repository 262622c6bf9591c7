"""Errors raised by the Klaviyo client: each message says what happened and what to do."""

from __future__ import annotations


class KlaviyoError(Exception):
    """Base class of every error the Klaviyo client raises."""


class KlaviyoConfigError(KlaviyoError):
    """The resource is misconfigured (no API key, a bad base URL, ...)."""


class KlaviyoAPIError(KlaviyoError):
    """Klaviyo answered with an error status that retrying cannot fix."""

    def __init__(self, message: str, *, status: int, path: str) -> None:
        super().__init__(message)
        self.status = status
        self.path = path


class KlaviyoAuthError(KlaviyoAPIError):
    """401: the API key is missing, malformed or revoked."""


class KlaviyoPermissionError(KlaviyoAPIError):
    """403: the API key lacks the scope the endpoint needs."""


class KlaviyoQuotaExhausted(KlaviyoAPIError):
    """429 with a ``Retry-After`` longer than the client may wait (``max_retry_after_s``).

    ``retry_after_s`` is how long Klaviyo asked to wait: a scheduler can defer the run by it.
    """

    def __init__(self, message: str, *, status: int, path: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message, status=status, path=path)
        self.retry_after_s = retry_after_s


class KlaviyoUnavailableError(KlaviyoError):
    """Retries were used up on server errors, timeouts, or broken responses."""


class KlaviyoPaginationError(KlaviyoError):
    """``links.next`` went somewhere it had already been (a cursor loop), or off the API's host."""


def redact(text: str, secret: str | None) -> str:
    """Replace every occurrence of ``secret`` in ``text``; a last guard for messages."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "***")
    return text
