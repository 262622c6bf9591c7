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
    """429 with a ``Retry-After`` longer than the client is allowed to wait."""


class KlaviyoUnavailableError(KlaviyoError):
    """Retries were used up on server errors, timeouts, or broken responses."""


class KlaviyoPaginationError(KlaviyoError):
    """``links.next`` went somewhere it had already been (a cursor loop)."""


def redact(text: str, secret: str | None) -> str:
    """Replace every occurrence of ``secret`` in ``text``; a last guard for messages."""
    if secret and len(secret) >= 4:
        return text.replace(secret, "***")
    return text
