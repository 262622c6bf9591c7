"""An httpx client for Klaviyo's JSON:API endpoints: one request (paced, retried), and the pages of
one cursor chain. It knows nothing of windows, decoding into rows or staging (``extraction`` drives
it); when to retry is ``retry.decide``'s call."""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit

import httpx
import orjson

from omniload_assets.klaviyo.catalog import TableSpec
from omniload_assets.klaviyo.errors import (
    KlaviyoAPIError,
    KlaviyoAuthError,
    KlaviyoConfigError,
    KlaviyoPaginationError,
    KlaviyoPermissionError,
    key_advice,
    redact,
    validate_api_key,
)
from omniload_assets.klaviyo.pages import RawPage, parse_document, read_page
from omniload_assets.klaviyo.ratelimit import SlidingWindowLimiter, limiter_for, read_headers
from omniload_assets.klaviyo.retry import RETRYABLE_STATUS, Outcome, RetryPolicy, decide

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_BASE_URL = "https://a.klaviyo.com"
DEFAULT_REVISION = "2026-10-15"
__all__ = ["RETRYABLE_STATUS", "ClientStats", "KlaviyoClient", "validate_base_url"]
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
#: A host name as DNS spells it (after IDNA encoding), or an IP literal.
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
#: What may be a ``user:password@`` in a URL (whatever precedes an ``@``), to mask in messages.
_USERINFO = re.compile(r"[^/?#]*@")


@dataclass(frozen=True)
class _Done(Generic[T]):
    """A request's decoded answer (as opposed to an outcome to decide on)."""

    value: T


@dataclass
class ClientStats:
    """Counters of one extraction, safe to update from several threads."""

    requests: int = 0
    pages: int = 0
    records: int = 0
    retries: int = 0
    throttled: int = 0
    throttle_wait_s: float = 0.0
    pacing_wait_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **amounts: float) -> None:
        with self._lock:
            for name, amount in amounts.items():
                setattr(self, name, getattr(self, name) + amount)

    def as_dict(self) -> dict[str, float]:
        with self._lock:
            return {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}


def _is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IP literals (not for names like ``127.0.0.1.example``)."""
    if host in LOOPBACK_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _origin(url: str) -> tuple[str, str, int | None]:
    """``(scheme, host, port)`` of a URL, the default port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or {"https": 443, "http": 80}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _page_identity(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """A page's path and sorted query, so the same page spelled two ways compares equal."""
    parts = urlsplit(url)
    return parts.path.rstrip("/"), tuple(sorted(parse_qsl(parts.query, keep_blank_values=True)))


def validate_base_url(base_url: str, name: str = "KLAVIYO_BASE_URL") -> str:
    """The base URL without a trailing slash, if requests can go to it: https (plain http only on
    loopback) with a host and a valid port, and no credentials, query or fragment. Otherwise a
    one-line :class:`KlaviyoConfigError` naming ``name``, the variable to fix; nothing is sent."""
    if not isinstance(base_url, str):
        raise KlaviyoConfigError(f"{name} must be a URL such as {DEFAULT_BASE_URL}; fix {name}")
    url = base_url.strip()
    masked = _USERINFO.sub("***@", url)  # a password is never echoed
    shown = repr(masked) if len(masked) <= 80 else repr(masked[:77]) + "..."

    def refused(problem: str) -> KlaviyoConfigError:
        return KlaviyoConfigError(f"Klaviyo base URL {shown} {problem}: fix {name}")

    if not url:
        raise KlaviyoConfigError(f"{name} is set but empty: unset it or set it to {DEFAULT_BASE_URL}")
    if any(char.isspace() or not char.isprintable() for char in url):
        raise refused("contains a space, line break or control character")
    try:
        parsed = httpx.URL(url)
        host = parsed.raw_host.decode("ascii").lower()
        port = parsed.port
        parsed.host  # noqa: B018 (decodes IDNA, which the host's A-labels may fail)
    except (httpx.InvalidURL, ValueError) as exc:  # IDNA errors are ValueErrors too
        reason = _USERINFO.sub("***@", " ".join(str(exc).split()))[:100]
        raise refused(f"is not a valid URL ({reason})") from None
    if parsed.userinfo:  # not echoed: it holds a password
        raise KlaviyoConfigError(f"{name} must not contain credentials (user:password@); fix {name}")
    if parsed.scheme not in {"https", "http"}:
        raise refused("must be https:// (plain http is allowed only on loopback)")
    if not host:
        raise refused(f"has no host (e.g. {DEFAULT_BASE_URL})")
    if not (_HOST_NAME.fullmatch(host) or _is_ip(host)):
        raise refused("has an invalid host name")
    if port is not None and not 1 <= port <= 65535:
        raise refused("has an invalid port (use 1-65535, or none)")
    if parsed.query or parsed.fragment or "?" in url or "#" in url:
        raise refused("must not have a query (?...) or fragment (#...)")
    if parsed.scheme == "http" and not _is_loopback(host):
        raise refused("must be https:// (plain http is allowed only on loopback)")
    return url.rstrip("/")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _auth_header(api_key: str) -> bytes:
    """The Authorization header's value: Latin-1 bytes, as HTTP/1.1 servers read a header (a key
    with characters beyond Latin-1 goes as UTF-8; Klaviyo then rejects it with a 401)."""
    value = f"Klaviyo-API-Key {api_key}"
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


class KlaviyoClient:
    """Talks to one Klaviyo account. Thread-safe; use as a context manager to close connections."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        revision: str = DEFAULT_REVISION,
        timeout_s: float = 60.0,
        max_retries: int = 5,
        max_retry_after_s: float = 120.0,
        retry_backoff_s: float = 0.5,
        max_connections: int = 32,
        pace: bool = True,
        sleep: Callable[[float], None] = time.sleep,
        key_name: str = "KLAVIYO_API_KEY",
    ) -> None:
        """``retry_backoff_s`` is the first pause after a failed request; it doubles per retry
        (jittered, at most ``MAX_BACKOFF_S``). A 429 whose ``Retry-After`` exceeds
        ``max_retry_after_s`` fails at once with :class:`KlaviyoQuotaExhausted` (a daily quota).
        ``key_name`` is where the key came from, named in messages about it (a variable or flag).
        The key and base URL are checked here, before any request."""
        self._api_key = validate_api_key(api_key or "", key_name)
        self._key_name = key_name
        self.base_url = validate_base_url(base_url)
        self.revision = revision
        self.max_retries = max_retries
        self.max_retry_after_s = max_retry_after_s
        self.retry_backoff_s = retry_backoff_s
        self.timeout_s = timeout_s
        self.policy = RetryPolicy(max_retries, max_retry_after_s, retry_backoff_s, timeout_s)
        self.pace = pace
        self._sleep = sleep
        # The account's identity for shared rate limiting, without keeping the key in the name.
        self._account = hashlib.sha256(f"{self.base_url}|{self._api_key}".encode()).hexdigest()[:16]
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={
                "Authorization": _auth_header(self._api_key),
                "revision": revision,
                "Accept": "application/vnd.api+json",
                "User-Agent": "omniload-assets/0.1",
            },
            timeout=httpx.Timeout(timeout_s),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def __repr__(self) -> str:
        return f"KlaviyoClient(base_url={self.base_url!r}, revision={self.revision!r})"

    def __enter__(self) -> KlaviyoClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    # -- one request -----------------------------------------------------------------------------

    def get_json(
        self,
        spec: TableSpec,
        url: str,
        params: dict[str, str] | None = None,
        stats: ClientStats | None = None,
    ) -> dict[str, Any]:
        """GET one page as parsed JSON, paced to ``spec``'s rate limit, retrying what can be retried."""
        return self._get(spec, url, params, stats, parse_document)

    def get_page(
        self,
        spec: TableSpec,
        url: str,
        params: dict[str, str] | None = None,
        stats: ClientStats | None = None,
        read: Callable[[bytes], RawPage] | None = None,
    ) -> RawPage:
        """GET one page as its raw body, indexed (``links.next`` and the records' keys) by ``read``
        (default :func:`~omniload_assets.klaviyo.pages.read_page`)."""
        return self._get(spec, url, params, stats, read or (lambda body: read_page(spec, body)))

    def _get(
        self,
        spec: TableSpec,
        url: str,
        params: dict[str, str] | None,
        stats: ClientStats | None,
        decode: Callable[[bytes], T],
    ) -> T:
        """GET with pacing and retries (as :func:`~omniload_assets.klaviyo.retry.decide` says); a
        body ``decode`` rejects (``ValueError``) is retried."""
        stats = stats or ClientStats()
        limiter = limiter_for(self._account, spec.path, spec.rate_limit)
        failures = throttles = 0
        while True:
            if self.pace:
                stats.add(pacing_wait_s=limiter.acquire())
            stats.add(requests=1)
            answer = self._attempt(url, params, decode, limiter)
            if isinstance(answer, _Done):
                return answer.value
            outcome, response = answer
            if outcome.status == 429:
                stats.add(throttled=1)
            decision = decide(
                outcome, path=spec.path, failures=failures, throttles=throttles, policy=self.policy
            )
            if decision.error is not None:
                raise decision.error
            if decision.final:
                assert response is not None  # only an answered status is final
                raise self._api_error(spec, response)
            if decision.throttled:
                throttles += 1
                stats.add(throttle_wait_s=decision.wait_s)
            else:
                failures += 1
                stats.add(retries=1)
                problem = outcome.problem or f"HTTP {outcome.status}"
                log.warning(
                    "Klaviyo %s: %s; retry %d/%d in %.1fs",
                    spec.path,
                    problem,
                    failures,
                    self.max_retries,
                    decision.wait_s,
                )
            self._sleep(decision.wait_s)

    def _attempt(
        self,
        url: str,
        params: dict[str, str] | None,
        decode: Callable[[bytes], T],
        limiter: SlidingWindowLimiter,
    ) -> _Done[T] | tuple[Outcome, httpx.Response | None]:
        """One try: the decoded body of a 200, else its outcome (and the response, if one came)."""
        try:
            # The body is read into a local, not onto the response: a response is garbage in a
            # reference cycle (httpx) and, having lived through the request, is freed only by
            # a rare full collection; with its megabyte body on it, hundreds piled up.
            with self._http.stream("GET", url, params=params) as response:
                status = response.status_code
                body = b"".join(response.iter_bytes()) if status == 200 else response.read()
            if self.pace and status != 429:
                # Klaviyo's report of the steady window: slow down before a 429, not after one.
                server = read_headers(response.headers)
                if server is not None:
                    limiter.observe(server)
            if status == 200:
                return _Done(decode(body))
            return Outcome(status, response.headers), response
        except httpx.TimeoutException as exc:
            problem = f"{type(exc).__name__}: no response within timeout_s={self.timeout_s:g}"
            return Outcome(None, {}, problem, timed_out=True), None
        except httpx.TransportError as exc:
            return Outcome(None, {}, f"{type(exc).__name__}: {redact(str(exc), self._api_key)}"), None
        except ValueError as exc:  # a truncated or malformed body (orjson's and msgspec's errors)
            problem = f"{type(exc).__name__}: {redact(str(exc), self._api_key)[:200]}"
            return Outcome(None, {}, problem), None

    def _api_error(self, spec: TableSpec, response: httpx.Response) -> KlaviyoAPIError:
        status = response.status_code
        detail = ""
        try:
            errors = orjson.loads(response.content).get("errors") or []
            detail = "; ".join(str(e.get("detail") or e.get("title") or e.get("code")) for e in errors)
        except (orjson.JSONDecodeError, AttributeError):
            detail = response.text[:200]
        detail = redact(detail, self._api_key) or response.reason_phrase
        if status == 401:
            return KlaviyoAuthError(
                f"Klaviyo rejected the API key (401: {detail}); {key_advice(self._key_name)}",
                status=status,
                path=spec.path,
            )
        if status == 403:
            scopes = " and ".join(f"'{scope}'" for scope in spec.scopes)
            return KlaviyoPermissionError(
                f"Klaviyo refused {spec.path} (403: {detail}); give the API key the {scopes} "
                f"scope{'s' if len(spec.scopes) > 1 else ''}",
                status=status,
                path=spec.path,
            )
        return KlaviyoAPIError(
            f"Klaviyo {spec.path} answered {status}: {detail}", status=status, path=spec.path
        )

    # -- pages -----------------------------------------------------------------------------------

    def iter_pages(
        self,
        spec: TableSpec,
        params: dict[str, str],
        stats: ClientStats | None = None,
        read: Callable[[bytes], RawPage] | None = None,
        path: str | None = None,
    ) -> Iterator[RawPage]:
        """Every page of a listing, following ``links.next`` until it is null.

        ``path`` is the listing's path when it is not ``spec.path`` (a child table's template filled
        with one parent's id); requests are paced by ``spec.path`` all the same, so every parent's
        requests share the endpoint's rate limit, as Klaviyo counts them.
        ``links.next`` is followed only on the base URL's scheme, host and port (the API key goes
        with every request), and never to a page already fetched (a cursor loop).
        """
        stats = stats or ClientStats()
        url: str = path or spec.path
        page_params: dict[str, str] | None = params
        first = f"{self.base_url}{url}?{urlencode(params)}"
        seen: set[tuple[str, tuple[tuple[str, str], ...]]] = {_page_identity(first)}
        while True:
            page = self.get_page(spec, url, page_params, stats, read)
            stats.add(pages=1)
            yield page
            next_url = page.next
            del page  # a page is a megabyte: not held while the next request waits
            if not next_url:
                return
            if not isinstance(next_url, str):
                raise KlaviyoPaginationError(
                    f"Klaviyo {spec.path} returned a links.next that is not a URL; re-run, and "
                    "report it if it repeats"
                )
            next_url = urljoin(self.base_url + "/", next_url)
            if _origin(next_url) != _origin(self.base_url):
                scheme, host, port = _origin(next_url)
                raise KlaviyoPaginationError(
                    f"Klaviyo {spec.path} returned a links.next on another host ({scheme}://{host}:{port}); "
                    f"refusing to send the API key outside {self.base_url}: check KLAVIYO_BASE_URL"
                )
            identity = _page_identity(next_url)
            if identity in seen:
                raise KlaviyoPaginationError(
                    f"Klaviyo {spec.path} returned the same next page twice; stopping to avoid a "
                    "loop (re-run; report it if it repeats)"
                )
            seen.add(identity)
            url, page_params = next_url, None
