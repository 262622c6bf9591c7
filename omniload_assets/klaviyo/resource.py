"""``KlaviyoResource``: the Dagster resource that configures and hands out a Klaviyo client."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import dagster as dg
from pydantic import BaseModel, Field, field_validator

from omniload_assets.klaviyo.catalog import TableSpec, effective_spec
from omniload_assets.klaviyo.client import (
    DEFAULT_BASE_URL,
    DEFAULT_REVISION,
    KlaviyoClient,
    validate_base_url,
)
from omniload_assets.klaviyo.source_uri import api_key_from_key_or_uri

R = TypeVar("R", bound=BaseModel)


def with_fields(resource: R, **updates: Any) -> R:
    """A copy of a Dagster resource (or IO manager) with some fields changed, built anew.

    Not pydantic's ``model_copy(update=...)``: it skips ``__init__``, where Dagster resolves the config
    it builds the run's resource from, so the run would keep the original values. Fields set
    explicitly (an ``EnvVar`` key included) are passed on as they are, by their aliases.
    """
    cls = type(resource)
    values = {
        (cls.model_fields[name].alias or name): getattr(resource, name) for name in resource.model_fields_set
    }
    values.update(updates)
    return cls(**values)


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
    predictive_analytics: bool = Field(
        default=False,
        description="Also load profiles' predictive analytics (CLV, expected orders, churn "
        "probability, next order date) into the JSON column profiles.predictive_analytics. Klaviyo "
        "then limits Get Profiles to 10/s, 150/m instead of 75/s, 750/m, and runs pace to that.",
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
        """A copy with ``update`` applied, validated, and seen by Dagster (:func:`with_fields`)."""
        return with_fields(self, **(update or {}))

    def table_spec(self, spec: TableSpec) -> TableSpec:
        """The catalogue entry as this account's runs read it: :func:`effective_spec` with the
        resource's options (profiles with predictive analytics when asked for)."""
        return effective_spec(spec, self.predictive_analytics)

    @contextmanager
    def get_client(self) -> Iterator[KlaviyoClient]:
        """A client for this account; closed when the block ends."""
        client = KlaviyoClient(
            api_key_from_key_or_uri(self.api_key or ""),
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
