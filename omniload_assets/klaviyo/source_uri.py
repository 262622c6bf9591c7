"""The ``klaviyo://?api_key=...`` source URI (ingestr's): its one parser.

``omniload ingest --source-uri`` and ``KLAVIYO_API_KEY`` (which also takes the bare key) both read
it here. Messages name where the value came from (the flag or the variable), never the key.
Nothing here imports Dagster: the CLI checks its flags before loading it.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from omniload_assets.klaviyo.errors import KlaviyoConfigError, validate_api_key

SCHEME = "klaviyo"
URI_SHAPE = "klaviyo://?api_key=pk_..."


def api_key_from_uri(uri: str, origin: str, *, bare_key_too: bool = False) -> str:
    """The private API key of ``uri``, a ``klaviyo://?api_key=...`` URI from ``origin`` (a flag or
    variable), checked to be one printable token; else a one-line :class:`KlaviyoConfigError` naming
    ``origin``. ``bare_key_too``: ``origin`` also takes the bare key, and the advice says so."""
    # Before parsing: urlsplit silently drops tabs and line breaks, mending a mangled key.
    uri = validate_api_key(uri, origin)
    try:
        parts = urlsplit(uri)
    except ValueError:  # e.g. an unclosed [ in the host part
        raise KlaviyoConfigError(f"{origin} must look like {URI_SHAPE} (it is not a URI)") from None
    if parts.scheme != SCHEME:
        raise KlaviyoConfigError(f"{origin} must look like {URI_SHAPE} (got scheme {parts.scheme!r})")
    keys = [k.strip() for k in parse_qs(parts.query).get("api_key", []) if k.strip()]
    if not keys:
        if bare_key_too:
            raise KlaviyoConfigError(
                f"the {SCHEME}:// URI in {origin} has no api_key: use {URI_SHAPE} or the bare private API key"
            )
        raise KlaviyoConfigError(f"{origin} has no api_key: use {URI_SHAPE}")
    return validate_api_key(keys[0], f"the api_key in {origin}")


def api_key_from_key_or_uri(value: str, origin: str = "KLAVIYO_API_KEY") -> str:
    """The key that ``value`` holds, bare or as a ``klaviyo://`` URI (as ``KLAVIYO_API_KEY`` may),
    checked; else a one-line :class:`KlaviyoConfigError` naming ``origin``."""
    value = value.strip()
    if value.startswith(f"{SCHEME}://"):
        return api_key_from_uri(value, origin, bare_key_too=True)
    return validate_api_key(value, origin)
