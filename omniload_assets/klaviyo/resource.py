"""``KlaviyoResource``: the Dagster resource that configures and hands out a Klaviyo client."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs, urlsplit

import dagster as dg
from pydantic import Field, field_validator

from omniload_assets.klaviyo.client import (
    DEFAULT_BASE_URL,
    DEFAULT_REVISION,
    KlaviyoClient,
    validate_base_url,
)
from omniload_assets.klaviyo.errors import KlaviyoConfigError, validate_api_key


def api_key_from_uri(value: str) -> str:
    """The key of a ``klaviyo://?api_key=...`` URI (the seed's format); other values unchanged."""
    if not value.startswith("klaviyo://"):
        return value
    # Checked before parsing: urlsplit silently drops tabs and line breaks, mending a mangled key.
    value = validate_api_key(value, "KLAVIYO_API_KEY")
    try:
        keys = parse_qs(urlsplit(value).query).get("api_key") or []
    except ValueError:  # e.g. an unclosed [ in the host part
        keys = []
    if not keys or not keys[0]:
        raise KlaviyoConfigError(
            "the klaviyo:// URI in KLAVIYO_API_KEY has no api_key: use klaviyo://?api_key=pk_... "
            "or the bare private API key"
        )
    return keys[0]


class KlaviyoResource(dg.ConfigurableResource):
    """A Klaviyo account. The API key comes from ``KLAVIYO_API_KEY`` and is never logged."""

    api_key: str = Field(
        description="Private API key, or a klaviyo://?api_key=... URI. Use EnvVar('KLAVIYO_API_KEY').",
        repr=False,  # keeps the key out of repr() and str(), hence out of logs and tracebacks
    )
    base_url: str = Field(default=DEFAULT_BASE_URL, description="Klaviyo API base URL.")
    revision: str = Field(default=DEFAULT_REVISION, description="Pinned API revision header.")
    page_size: int | None = Field(
        default=None, description="Records per page; default each endpoint's maximum."
    )
    extract_parallelism: int = Field(
        default=40,
        ge=1,
        le=64,
        description="Most concurrent requests per table in one run; each endpoint also gets no more "
        "workers than its rate-limit tier can use (XL 40, L 8, M 4, S 3).",
    )
    decode_processes: int | None = Field(
        default=None,
        ge=0,
        le=16,
        description="Processes that decode pages into rows once a table has staged 20,000 rows, so "
        "decoding does not compete with fetching for one interpreter; default: one fewer than the "
        "CPUs, at most 2 (0: decode in the run's own process).",
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Per-request timeout, seconds.")
    max_retries: int = Field(default=5, ge=0, description="Retries on 5xx, timeouts and broken responses.")
    max_retry_after_s: float = Field(
        default=120.0,
        ge=0,
        description="Longest Retry-After a 429 may make a run wait; longer (a daily quota) fails the "
        "run at once with a message saying when to re-run. Raise it (e.g. 86400) to wait instead.",
    )
    retry_backoff_s: float = Field(
        default=0.5,
        ge=0,
        description="First pause before retrying a failed request; doubles per retry, at most 30 s.",
    )

    @field_validator("base_url", mode="before")
    @classmethod
    def _check_base_url(cls, value: Any) -> Any:
        """Refuse an unusable base URL when the resource is configured (the definitions load), in
        one line naming KLAVIYO_BASE_URL; an ``EnvVar`` is checked when the client is made."""
        if isinstance(value, str) and value and not isinstance(value, dg.EnvVar):
            validate_base_url(value)
        return value

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> KlaviyoResource:
        """A copy with ``update`` applied, validated, and seen by Dagster.

        pydantic's own ``model_copy`` skips ``__init__``, so Dagster would keep configuring the run
        from the original values; rebuilding keeps an ``EnvVar`` key an ``EnvVar``.
        """
        values = {name: getattr(self, name) for name in type(self).model_fields}
        values.update(update or {})
        return type(self)(**values)

    @contextmanager
    def get_client(self) -> Iterator[KlaviyoClient]:
        """A client for this account; closed when the block ends."""
        client = KlaviyoClient(
            api_key_from_uri(self.api_key or ""),
            base_url=self.base_url or DEFAULT_BASE_URL,
            revision=self.revision,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            max_retry_after_s=self.max_retry_after_s,
            retry_backoff_s=self.retry_backoff_s,
            max_connections=self.extract_parallelism + 4,
        )
        try:
            yield client
        finally:
            client.close()
