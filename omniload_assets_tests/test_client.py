"""Unit tests of the Klaviyo HTTP client against pytest-httpx mocks (no network, no real sleeping)."""

from __future__ import annotations

import json
import logging

import httpx
import pytest

from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import ClientStats, KlaviyoClient
from omniload_assets.klaviyo.errors import (
    KlaviyoAPIError,
    KlaviyoAuthError,
    KlaviyoConfigError,
    KlaviyoPaginationError,
    KlaviyoPermissionError,
    KlaviyoQuotaExhausted,
    KlaviyoUnavailableError,
)
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets_tests.klaviyo_mocks import (
    BASE,
    D0,
    DAY,
    EVENTS,
    KEY,
    error_body,
    ids,
    page,
    query,
    resource,
)
from omniload_assets_tests.records import iter_records

# -- headers -------------------------------------------------------------------------------------


def test_every_request_carries_auth_revision_and_accept_headers(httpx_mock, client):
    next_url = f"{BASE}/api/events?page%5Bcursor%5D=c2&page%5Bsize%5D=1000"
    httpx_mock.add_response(json=page([resource("events", "e1", D0)], next_url))
    httpx_mock.add_response(status_code=503)  # the retried request must carry them too
    httpx_mock.add_response(json=page([resource("events", "e2", D0)]))

    assert ids(iter_records(client, EVENTS, DAY)) == ["e1", "e2"]

    requests = httpx_mock.get_requests()
    assert len(requests) == 3
    for request in requests:
        assert request.headers["Authorization"] == f"Klaviyo-API-Key {KEY}"
        assert request.headers["revision"] == "2026-10-15"
        assert request.headers["Accept"] == "application/vnd.api+json"
        assert request.method == "GET"


# -- pagination ----------------------------------------------------------------------------------


def test_follows_links_next_verbatim_until_null(httpx_mock, client):
    next2 = f"{BASE}/api/events?filter=x&page%5Bcursor%5D=bmV4dDo6MQ&page%5Bsize%5D=1000"
    next3 = f"{BASE}/api/events?filter=x&page%5Bcursor%5D=bmV4dDo6Mg&page%5Bsize%5D=1000"
    httpx_mock.add_response(json=page([resource("events", "e1", D0)], next2))
    httpx_mock.add_response(json=page([resource("events", "e2", D0), resource("events", "e3", D0)], next3))
    httpx_mock.add_response(json=page([resource("events", "e4", D0)], None))
    stats = ClientStats()

    batches = list(iter_records(client, EVENTS, DAY, stats=stats))

    assert [[r["id"] for r in b] for b in batches] == [["e1"], ["e2", "e3"], ["e4"]]
    first, second, third = httpx_mock.get_requests()
    assert first.url.path == "/api/events"
    assert "page[cursor]" not in query(first)
    # Later pages are exactly the URLs Klaviyo handed out: no cursor built, no parameter re-added.
    assert second.url == httpx.URL(next2)
    assert third.url == httpx.URL(next3)
    assert stats.pages == 3
    assert stats.records == 4


def test_repeating_links_next_raises_pagination_error(httpx_mock, client):
    loop = f"{BASE}/api/events?page%5Bcursor%5D=same"
    httpx_mock.add_response(json=page([resource("events", "e1", D0)], loop))
    httpx_mock.add_response(json=page([resource("events", "e2", D0)], loop))

    with pytest.raises(KlaviyoPaginationError, match="same next page"):
        list(iter_records(client, EVENTS, DAY))
    assert len(httpx_mock.get_requests()) == 2


def test_empty_listing_is_one_request(httpx_mock, client):
    httpx_mock.add_response(json={"data": [], "links": {"next": None}})
    assert ids(iter_records(client, EVENTS, DAY)) == []
    assert len(httpx_mock.get_requests()) == 1


# -- 429 -----------------------------------------------------------------------------------------


def test_429_sleeps_for_retry_after_then_succeeds(httpx_mock, client, sleeps):
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "7"}, json=error_body("slow", 429))
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "2"}, json=error_body("slow", 429))
    httpx_mock.add_response(json=page([resource("events", "e1", D0)]))
    stats = ClientStats()

    assert ids(iter_records(client, EVENTS, DAY, stats=stats)) == ["e1"]

    assert len(sleeps) == 2
    assert 7 <= sleeps[0] <= 7.25
    assert 2 <= sleeps[1] <= 2.25
    assert stats.throttled == 2
    assert stats.requests == 3
    assert stats.retries == 0  # throttling does not use up the retry budget
    assert stats.throttle_wait_s == pytest.approx(sum(sleeps))


def test_429_without_retry_after_waits_a_second(httpx_mock, client, sleeps):
    httpx_mock.add_response(status_code=429)
    httpx_mock.add_response(json=page([]))
    list(iter_records(client, EVENTS, DAY))
    assert len(sleeps) == 1
    assert 1 <= sleeps[0] <= 1.25


def test_429_longer_than_max_retry_after_fails_at_once_with_quota_message(httpx_mock, client, sleeps):
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "3600"}, json=error_body("daily", 429))
    stats = ClientStats()

    with pytest.raises(KlaviyoQuotaExhausted) as caught:
        list(iter_records(client, EVENTS, DAY, stats=stats))

    message = str(caught.value)
    assert "quota" in message
    assert "3600" in message
    assert "max_retry_after_s" in message
    assert caught.value.status == 429
    assert sleeps == []
    assert stats.throttled == 1
    assert len(httpx_mock.get_requests()) == 1


# -- 5xx, transport errors, broken bodies --------------------------------------------------------


def test_5xx_is_retried_with_growing_backoff_then_succeeds(httpx_mock, client, sleeps):
    httpx_mock.add_response(status_code=503)
    httpx_mock.add_response(status_code=500, text="<html>oops</html>")
    httpx_mock.add_response(status_code=502)
    httpx_mock.add_response(json=page([resource("events", "e1", D0)]))
    stats = ClientStats()

    assert ids(iter_records(client, EVENTS, DAY, stats=stats)) == ["e1"]

    # Exponential backoff with jitter: base 0.5 s doubling, times a factor in [0.5, 1].
    assert len(sleeps) == 3
    assert 0.25 <= sleeps[0] <= 0.5
    assert 0.5 <= sleeps[1] <= 1.0
    assert 1.0 <= sleeps[2] <= 2.0
    assert stats.retries == 3
    assert stats.requests == 4


def test_5xx_retries_exhausted_raise_unavailable(httpx_mock, sleeps):
    with KlaviyoClient(KEY, pace=False, sleep=sleeps.append, max_retries=2) as client:
        for _ in range(3):
            httpx_mock.add_response(status_code=502)
        with pytest.raises(KlaviyoUnavailableError) as caught:
            list(iter_records(client, EVENTS, DAY))
    assert "/api/events" in str(caught.value)
    assert "HTTP 502" in str(caught.value)
    assert len(httpx_mock.get_requests()) == 3
    assert len(sleeps) == 2


def test_zero_retries_fail_on_the_first_5xx(httpx_mock, sleeps):
    with KlaviyoClient(KEY, pace=False, sleep=sleeps.append, max_retries=0) as client:
        httpx_mock.add_response(status_code=500)
        with pytest.raises(KlaviyoUnavailableError):
            list(iter_records(client, EVENTS, DAY))
    assert sleeps == []


def test_transport_errors_are_retried(httpx_mock, client, sleeps):
    httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    httpx_mock.add_exception(httpx.ReadTimeout("read timed out"))
    httpx_mock.add_response(json=page([resource("events", "e1", D0)]))
    stats = ClientStats()

    assert ids(iter_records(client, EVENTS, DAY, stats=stats)) == ["e1"]
    assert len(sleeps) == 2
    assert stats.retries == 2


def test_transport_errors_exhausted_raise_unavailable_naming_the_error(httpx_mock, client):
    for _ in range(4):
        httpx_mock.add_exception(httpx.ReadTimeout("read timed out"))
    with pytest.raises(KlaviyoUnavailableError, match="ReadTimeout"):
        list(iter_records(client, EVENTS, DAY))
    assert len(httpx_mock.get_requests()) == 4


@pytest.mark.parametrize("body", [b'{"data": [{"type": "event"', b"<html>proxy</html>", b"[]", b"null"])
def test_malformed_json_body_is_retried(httpx_mock, client, sleeps, body):
    httpx_mock.add_response(status_code=200, content=body)
    httpx_mock.add_response(json=page([resource("events", "e1", D0)]))
    stats = ClientStats()

    assert ids(iter_records(client, EVENTS, DAY, stats=stats)) == ["e1"]
    assert stats.retries == 1
    assert len(sleeps) == 1


# -- non-retryable errors ------------------------------------------------------------------------


def test_401_raises_auth_error_naming_the_env_var(httpx_mock, client, sleeps):
    httpx_mock.add_response(
        status_code=401, json=error_body("Incorrect authentication credentials.", 401, "not_authenticated")
    )
    with pytest.raises(KlaviyoAuthError) as caught:
        list(iter_records(client, EVENTS, DAY))
    assert "KLAVIYO_API_KEY" in str(caught.value)
    assert "Incorrect authentication credentials." in str(caught.value)
    assert caught.value.status == 401
    assert sleeps == []
    assert len(httpx_mock.get_requests()) == 1


@pytest.mark.parametrize(
    ("table", "scope"),
    [("events", "events:read"), ("catalog-items", "catalogs:read"), ("profiles", "profiles:read")],
)
def test_403_raises_permission_error_naming_the_scope(httpx_mock, client, sleeps, table, scope):
    detail = "You do not have permission to perform this action."
    httpx_mock.add_response(status_code=403, json=error_body(detail, 403, "permission_denied"))
    with pytest.raises(KlaviyoPermissionError) as caught:
        list(iter_records(client, get_table(table), DAY))
    message = str(caught.value)
    assert f"'{scope}'" in message
    assert detail in message
    assert get_table(table).path in message
    assert caught.value.status == 403
    assert sleeps == []


def test_400_raises_api_error_with_klaviyo_detail(httpx_mock, client, sleeps):
    detail = "'greater-or-equal' operator is not allowed for the 'updated' field"
    httpx_mock.add_response(status_code=400, json=error_body(detail, 400, "invalid"))
    with pytest.raises(KlaviyoAPIError) as caught:
        list(iter_records(client, EVENTS, DAY))
    assert type(caught.value) is KlaviyoAPIError
    assert detail in str(caught.value)
    assert caught.value.status == 400
    assert caught.value.path == "/api/events"
    assert sleeps == []
    assert len(httpx_mock.get_requests()) == 1


def test_400_with_a_non_json_body_still_explains(httpx_mock, client):
    httpx_mock.add_response(status_code=400, text="bad filter syntax near ')'")
    with pytest.raises(KlaviyoAPIError, match="bad filter syntax"):
        list(iter_records(client, EVENTS, DAY))


# -- key redaction -------------------------------------------------------------------------------


def _mock_401(m):
    m.add_response(status_code=401, json=error_body(f"Invalid API key {KEY}", 401))


def _mock_403(m):
    m.add_response(status_code=403, json=error_body(f"key {KEY} lacks events:read", 403))


def _mock_400_text(m):
    m.add_response(status_code=400, text=f"Authorization: Klaviyo-API-Key {KEY} is malformed")


def _mock_transport(m):
    for _ in range(4):
        m.add_exception(httpx.ConnectError(f"proxy refused Klaviyo-API-Key {KEY}"))


def _mock_5xx(m):
    for _ in range(4):
        m.add_response(status_code=500, text=f"trace: header={KEY}")


def _mock_quota(m):
    m.add_response(
        status_code=429, headers={"Retry-After": "86400"}, json=error_body(f"{KEY} over quota", 429)
    )


def _mock_bad_json(m):
    for _ in range(4):
        m.add_response(status_code=200, content=f'{{"data": "{KEY}'.encode())


@pytest.mark.parametrize(
    "mock",
    [_mock_401, _mock_403, _mock_400_text, _mock_transport, _mock_5xx, _mock_quota, _mock_bad_json],
    ids=lambda f: f.__name__.removeprefix("_mock_"),
)
def test_api_key_never_appears_in_errors_reprs_or_logs(httpx_mock, client, caplog, mock):
    caplog.set_level(logging.DEBUG)
    mock(httpx_mock)

    with pytest.raises((KlaviyoAPIError, KlaviyoUnavailableError)) as caught:
        list(iter_records(client, EVENTS, DAY))

    exc: BaseException | None = caught.value
    while exc is not None:
        assert KEY not in str(exc)
        assert KEY not in repr(exc)
        exc = exc.__cause__ or exc.__context__
    assert KEY not in repr(client)
    assert KEY not in str(client)
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert KEY not in caplog.text


def test_redaction_keeps_the_rest_of_the_message(httpx_mock, client, caplog):
    caplog.set_level(logging.WARNING)
    _mock_transport(httpx_mock)
    with pytest.raises(KlaviyoUnavailableError) as caught:
        list(iter_records(client, EVENTS, DAY))
    assert "proxy refused Klaviyo-API-Key ***" in str(caught.value)
    retries = [r for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3
    assert all("***" in r.getMessage() for r in retries)


@pytest.mark.parametrize("api_key", [KEY, f"klaviyo://?api_key={KEY}"])
def test_resource_repr_hides_the_key(api_key):
    res = KlaviyoResource(api_key=api_key)
    assert KEY not in repr(res)
    assert KEY not in str(res)
    with res.get_client() as c:
        assert KEY not in repr(c)


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://a.klaviyo.com",
        "http://example.com:8080",
        "http://127.0.0.1.attacker.example",
        "http://localhost.attacker.example",
        "ftp://a.klaviyo.com",
        "a.klaviyo.com",
    ],
)
def test_plain_http_to_a_remote_host_is_refused(url):
    with pytest.raises(KlaviyoConfigError, match="https://"):
        KlaviyoClient(KEY, base_url=url, pace=False)


@pytest.mark.parametrize(
    "url",
    [
        "https://a.klaviyo.com",
        "http://localhost:8123",
        "http://127.0.0.1:8123",
        "http://127.0.0.2",
        "http://[::1]:8123",
    ],
)
def test_https_and_loopback_http_are_accepted(url):
    with KlaviyoClient(KEY, base_url=url + "/", pace=False) as c:
        assert c.base_url == url


@pytest.mark.parametrize("api_key", ["", "   ", "\n"])
def test_missing_or_blank_key_is_a_config_error_naming_the_env_var(api_key):
    with pytest.raises(KlaviyoConfigError, match="KLAVIYO_API_KEY"):
        KlaviyoClient(api_key, pace=False)


@pytest.mark.parametrize("api_key", ["", "  ", "klaviyo://?api_key=", "klaviyo://"])
def test_resource_with_missing_key_is_a_config_error_naming_the_env_var(api_key):
    res = KlaviyoResource(api_key=api_key)
    with pytest.raises(KlaviyoConfigError, match="KLAVIYO_API_KEY"), res.get_client():
        pass


def test_resource_accepts_a_klaviyo_uri_and_sends_its_key(httpx_mock):
    httpx_mock.add_response(json=page([resource("events", "e1", D0)]))
    res = KlaviyoResource(
        api_key=f"klaviyo://?api_key={KEY}", base_url="http://127.0.0.1:8123", max_retries=0
    )
    with res.get_client() as c:
        assert ids(iter_records(c, EVENTS, DAY)) == ["e1"]
    request = httpx_mock.get_request()
    assert request.headers["Authorization"] == f"Klaviyo-API-Key {KEY}"
    assert str(request.url).startswith("http://127.0.0.1:8123/api/events?")


def test_resource_passes_a_bare_key_through(httpx_mock):
    httpx_mock.add_response(json=page([]))
    with KlaviyoResource(api_key=KEY, max_retries=0).get_client() as c:
        list(iter_records(c, EVENTS, DAY))
    request = httpx_mock.get_request()
    assert request.headers["Authorization"] == f"Klaviyo-API-Key {KEY}"
    assert request.url.host == "a.klaviyo.com"
    assert request.url.scheme == "https"


# -- keys that are not one printable token; keys in every representation --------------------------

#: Passes validation, and every representation of it differs: quotes, %, a backslash, Latin-1, more.
ODD_KEY = "pk_\"quoted'%41\u00e9\\x_\u20ac_3f9c2a7be41d4c08"


@pytest.mark.parametrize(
    ("api_key", "problem"),
    [
        (f"{KEY}\nsecond line", "a line break"),
        (f"{KEY}\r\nX-Injected: 1", "a line break"),
        (f"{KEY[:10]}\t{KEY[10:]}", "a tab"),
        (f"{KEY[:10]} {KEY[10:]}", "a space"),
        (f"{KEY}\x00", "a control character"),
        (f"\x1b[31m{KEY}", "a control character"),
        (f"{KEY}\u200b", "an invisible"),
        (f"{KEY}\u2028tail", "a line break"),
    ],
)
def test_a_key_that_is_not_one_printable_token_is_refused_before_any_request(httpx_mock, api_key, problem):
    from omniload_assets_tests.test_security import leaks

    with pytest.raises(KlaviyoConfigError) as caught:
        KlaviyoClient(api_key, pace=False)
    message = str(caught.value)
    assert message.startswith("KLAVIYO_API_KEY is not a single printable token (it contains ")
    assert problem in message and "paste the key again" in message
    assert len(message.splitlines()) == 1
    assert leaks(api_key, message, repr(caught.value)) == []
    res = KlaviyoResource(api_key=api_key, base_url="http://127.0.0.1:8123")
    with (
        pytest.raises(KlaviyoConfigError, match="KLAVIYO_API_KEY is not a single printable"),
        res.get_client(),
    ):
        pass
    assert httpx_mock.get_requests() == []


def test_a_key_in_a_klaviyo_uri_is_checked_before_the_uri_is_parsed(httpx_mock):
    """urlsplit drops tabs and line breaks: unchecked, a mangled key would be mended silently."""
    for uri in (f"klaviyo://?api_key={KEY[:9]}\n{KEY[9:]}", f"klaviyo://?api_key={KEY[:9]}%0D%0A{KEY[9:]}"):
        res = KlaviyoResource(api_key=uri)
        with pytest.raises(KlaviyoConfigError, match="KLAVIYO_API_KEY is not a single"), res.get_client():
            pass
    assert httpx_mock.get_requests() == []


def raw_auth(request: httpx.Request) -> bytes:
    """The Authorization header's bytes as sent."""
    (value,) = [v for k, v in request.headers.raw if k.lower() == b"authorization"]
    return value


def test_a_key_beyond_latin_1_is_sent_and_a_401_explains(httpx_mock, sleeps):
    httpx_mock.add_response(status_code=401, json=error_body("Incorrect authentication credentials.", 401))
    with (
        KlaviyoClient(ODD_KEY, pace=False, sleep=sleeps.append) as c,
        pytest.raises(KlaviyoAuthError) as caught,
    ):
        list(iter_records(c, EVENTS, DAY))
    assert "set KLAVIYO_API_KEY to a valid private API key" in str(caught.value)
    assert raw_auth(httpx_mock.get_request()) == f"Klaviyo-API-Key {ODD_KEY}".encode()


def test_a_latin_1_key_goes_as_latin_1_as_servers_read_headers(httpx_mock):
    key = "pk_\"quoted'%41\u00e9_3f9c2a7be41d4c08"
    httpx_mock.add_response(json=page([]))
    with KlaviyoClient(key, pace=False) as c:
        list(iter_records(c, EVENTS, DAY))
    assert raw_auth(httpx_mock.get_request()) == f"Klaviyo-API-Key {key}".encode("latin-1")


def _forms_mocks(m, forms: list[str]) -> None:
    for form in forms[:3]:
        m.add_exception(httpx.LocalProtocolError(f"Illegal header value {form}"))
    m.add_response(status_code=400, text=" / ".join(forms))


def test_every_representation_of_the_key_is_redacted_from_errors_and_logs(httpx_mock, caplog, sleeps):
    from omniload_assets_tests.test_security import key_forms, leaks

    caplog.set_level(logging.DEBUG)
    header = f"Klaviyo-API-Key {ODD_KEY}"
    forms = sorted(key_forms(ODD_KEY)) + [repr(header.encode()), repr(header), json.dumps(header)]
    for form in forms[:3]:
        httpx_mock.add_exception(httpx.LocalProtocolError(f"Illegal header value {form}"))
    httpx_mock.add_response(status_code=400, text=" / ".join(forms))
    client = KlaviyoClient(ODD_KEY, pace=False, sleep=sleeps.append, max_retries=3)
    with client, pytest.raises(KlaviyoAPIError) as caught:
        list(iter_records(client, EVENTS, DAY))
    assert "***" in str(caught.value)
    assert leaks(ODD_KEY, str(caught.value), repr(caught.value), caplog.text) == []
    retries = [r.getMessage() for r in caplog.records if "retry" in r.getMessage()]
    assert len(retries) == 3
    assert all("Illegal header value ***" in line for line in retries)


# -- base URLs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("https://", "has no host"),
        ("https:///api", "has no host"),
        ("https://:443", "has no host"),
        ("https://a.klaviyo.com:99999", "invalid port"),
        ("https://a.klaviyo.com:abc", "not a valid URL"),
        ("http://127.0.0.1:0", "invalid port"),
        ("https://[::1", "not a valid URL"),
        ("https://a.klaviyo.com?x=1", "query"),
        ("https://a.klaviyo.com/#top", "fragment"),
        ("https://a..klaviyo.com", "invalid host"),
        ("https://a%20b.klaviyo.com", "invalid host"),
        ("https://a.klaviyo.com/\napi", "line break"),
        ("", "empty"),
    ],
)
def test_an_unusable_base_url_is_refused_in_one_line_before_any_request(httpx_mock, url, problem):
    with pytest.raises(KlaviyoConfigError) as caught:
        KlaviyoClient(KEY, base_url=url, pace=False)
    message = str(caught.value)
    assert problem in message and "KLAVIYO_BASE_URL" in message
    assert len(message.splitlines()) == 1
    with pytest.raises(KlaviyoConfigError, match="KLAVIYO_BASE_URL"):
        KlaviyoResource(api_key=KEY, base_url=url or " ")  # when configured, not when used
    assert httpx_mock.get_requests() == []


def test_a_base_url_with_credentials_is_refused_without_echoing_them(httpx_mock):
    with pytest.raises(KlaviyoConfigError, match="must not contain credentials") as caught:
        KlaviyoClient(KEY, base_url="https://me:s3cr3t-pw@a.klaviyo.com", pace=False)
    assert "s3cr3t-pw" not in str(caught.value)
    assert "KLAVIYO_BASE_URL" in str(caught.value)


def test_a_base_url_from_an_env_var_is_checked_when_the_run_resolves_it(httpx_mock, monkeypatch):
    import dagster as dg

    monkeypatch.setenv("KLAVIYO_BASE_URL", "https://a.klaviyo.com:99999")
    res = KlaviyoResource(api_key=KEY, base_url=dg.EnvVar("KLAVIYO_BASE_URL"))  # not resolved yet
    with pytest.raises(dg.DagsterResourceFunctionError) as caught, dg.build_resources({"klaviyo": res}):
        pass
    cause = caught.value.user_exception
    assert isinstance(cause, KlaviyoConfigError)
    assert "invalid port" in str(cause) and "KLAVIYO_BASE_URL" in str(cause)
    assert httpx_mock.get_requests() == []


# -- pacing through the shared limiter -----------------------------------------------------------


def test_client_paces_requests_through_the_shared_limiter(httpx_mock, monkeypatch):
    from omniload_assets.klaviyo import client as client_module

    acquired = []

    class RecordingLimiter:
        def acquire(self) -> float:
            acquired.append(1)
            return 0.5

    monkeypatch.setattr(client_module, "limiter_for", lambda account, path, limit: RecordingLimiter())
    httpx_mock.add_response(json=page([], f"{BASE}/api/events?page%5Bcursor%5D=2"))
    httpx_mock.add_response(json=page([]))
    stats = ClientStats()
    with KlaviyoClient(KEY, pace=True) as paced:
        list(iter_records(paced, EVENTS, DAY, stats=stats))
    assert len(acquired) == 2
    assert stats.pacing_wait_s == pytest.approx(1.0)


def test_unpaced_client_never_touches_the_limiter(httpx_mock, monkeypatch, client):
    from omniload_assets.klaviyo import client as client_module

    class ExplodingLimiter:
        def acquire(self) -> float:
            raise AssertionError("pace=False must not acquire")

    monkeypatch.setattr(client_module, "limiter_for", lambda account, path, limit: ExplodingLimiter())
    httpx_mock.add_response(json=page([]))
    list(iter_records(client, EVENTS, DAY))
