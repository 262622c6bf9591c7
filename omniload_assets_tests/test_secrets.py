"""The key and the base URL are checked before any request; messages name what the user set (the
variable or the flag) and never hold the key, in any representation. Parsers are property-tested."""

from __future__ import annotations

import ipaddress
import os
import secrets
import subprocess
import sys
from pathlib import Path
from unittest import mock
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniload_assets.cli import UsageError, api_key_from_source_uri, main
from omniload_assets.klaviyo.client import KlaviyoClient, validate_base_url
from omniload_assets.klaviyo.errors import KlaviyoConfigError, redact, validate_api_key
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets_tests.test_security import KEY_SHAPES, key_forms, leaks, make_key

OMNILOAD = Path(sys.executable).parent / "omniload"
DAGSTER = Path(sys.executable).parent / "dagster"
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment without our variables or Dagster's, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMNILOAD_", "KLAVIYO_", "DAGSTER_"))}
    env["OMNILOAD_STAGING_DIR"] = str(tmp_path / "staging")
    return {**env, **extra}


def is_one_printable_token(text: str) -> bool:
    return bool(text) and all(c.isprintable() and not c.isspace() for c in text)


# -- redaction -----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [*KEY_SHAPES, "newline", "backslashes"])
def test_redact_masks_every_representation_and_keeps_the_rest(shape) -> None:
    extra = {"newline": "pk_{hex}\nsecond line", "backslashes": "pk_\\\\{hex}\\"}
    key = make_key(extra.get(shape) or KEY_SHAPES[shape])
    header = f"Klaviyo-API-Key {key}"
    shown = [
        *key_forms(key),
        repr(header.encode("utf-8")),  # how h11 shows an illegal header value
        repr(header),
        quote(header),
    ]
    for form in shown:
        masked = redact(f"before {form} after", key)
        assert masked.startswith("before ") and masked.endswith(" after") and "***" in masked, form
        assert leaks(key, masked) == [], form


def test_redact_leaves_messages_without_the_key_alone() -> None:
    key = make_key(KEY_SHAPES["quoted"])
    text = "Klaviyo /api/events failed 3 times (last: HTTP 503) \\n %41 \u00e9 \\x41"
    assert redact(text, key) == text
    assert redact("pk_x in a message", "pk_x"[:3]) == "pk_x in a message"  # too short to mask


# -- the CLI: the key's origin in every message -------------------------------------------------


BAD_KEYS = {
    "uri-percent-newline": (["--source-uri", "klaviyo://?api_key=pk_{hex}%0Asecond"], {}, "--source-uri"),
    "uri-raw-tab": (["--source-uri", "klaviyo://?api_key=pk_{hex}\tx"], {}, "--source-uri"),
    "uri-escape": (["--source-uri", "klaviyo://?api_key=pk_%1B{hex}"], {}, "--source-uri"),
    "env-newline": ([], {"KLAVIYO_API_KEY": "pk_{hex}\nsecond"}, "KLAVIYO_API_KEY"),
    "env-uri-crlf": ([], {"KLAVIYO_API_KEY": "klaviyo://?api_key=pk_{hex}%0D%0Ax"}, "KLAVIYO_API_KEY"),
    "env-zero-width": ([], {"KLAVIYO_API_KEY": "pk_\u200b{hex}"}, "KLAVIYO_API_KEY"),
}


@pytest.mark.parametrize("case", BAD_KEYS)
def test_a_cli_key_that_is_not_one_printable_token_is_a_usage_error(
    case, capsys, monkeypatch, tmp_path
) -> None:
    hex_ = secrets.token_hex(20)
    args, env, origin = BAD_KEYS[case]
    args = [a.replace("{hex}", hex_) for a in args]
    monkeypatch.delenv("KLAVIYO_API_KEY", raising=False)
    # Were the key let through, the run must go nowhere and change nothing of this process.
    monkeypatch.setenv("KLAVIYO_BASE_URL", "http://127.0.0.1:9")
    safe = {"OMNILOAD_DUCKDB_PATH": str(tmp_path / "k.duckdb"), "OMNILOAD_START_DATE": "2024-01-01"}
    for name, value in {**safe, "OMNILOAD_DUCKDB_SCHEMA": "klaviyo"}.items():
        monkeypatch.setenv(name, value)
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("{hex}", hex_))
    status = main(["ingest", "--source-table", "tags", *args])
    assert status == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("omniload ingest: error: ")
    assert origin in line and "is not a single printable token" in line and "paste the key again" in line
    assert hex_ not in line


def run_cli(tmp_path: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(OMNILOAD), *args],
        cwd=tmp_path,
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


INGEST_TAGS = ["ingest", "--source-table", "tags", "--dest-uri", "duckdb:///k.duckdb", "--progress", "off"]


@pytest.mark.parametrize("shape", ["hex", "quoted"])
def test_a_rejected_source_uri_key_says_to_fix_source_uri(simulator, tmp_path, shape) -> None:
    wrong = make_key(KEY_SHAPES[shape])
    uri = f"klaviyo://?api_key={quote(wrong, safe='')}"
    result = run_cli(
        tmp_path, *INGEST_TAGS, "--source-uri", uri, env={"KLAVIYO_BASE_URL": simulator.base_url}
    )
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("omniload: error: ingest of tags failed: Klaviyo rejected the API key (401")
    assert "pass a valid private API key in --source-uri" in line
    assert "KLAVIYO_API_KEY" not in line
    assert leaks(wrong, result.stdout, result.stderr) == []
    assert simulator.stats.total_requests == 1


def test_a_rejected_env_key_still_says_to_fix_the_variable(simulator, tmp_path) -> None:
    wrong = make_key(KEY_SHAPES["unicode"])
    env = {"KLAVIYO_BASE_URL": simulator.base_url, "KLAVIYO_API_KEY": wrong}
    result = run_cli(tmp_path, *INGEST_TAGS, env=env)
    assert result.returncode == 1, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "set KLAVIYO_API_KEY to a valid private API key" in line
    assert "--source-uri" not in line
    assert leaks(wrong, result.stdout, result.stderr) == []


# -- the base URL when the code location loads ---------------------------------------------------


def test_definitions_with_an_unusable_base_url_fail_to_load(monkeypatch) -> None:
    from omniload_assets.definitions import build_definitions

    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_x")
    for url, problem in [("https://", "has no host"), ("https://a.klaviyo.com:99999", "invalid port")]:
        monkeypatch.setenv("KLAVIYO_BASE_URL", url)
        with pytest.raises(KlaviyoConfigError, match=f"{problem}.*fix KLAVIYO_BASE_URL"):
            build_definitions()


def test_dagster_definitions_validate_fails_with_one_line_naming_the_variable(tmp_path) -> None:
    env = clean_env(tmp_path, KLAVIYO_API_KEY="pk_x", KLAVIYO_BASE_URL="https://a.klaviyo.com:abc")
    result = subprocess.run(
        [str(DAGSTER), "definitions", "validate", "-m", "omniload_assets"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode != 0
    output = result.stdout + result.stderr
    errors = [line for line in output.splitlines() if line.startswith("omniload_assets.klaviyo.errors.")]
    assert len(errors) == 1, output[-3000:]
    assert errors[0] == (
        "omniload_assets.klaviyo.errors.KlaviyoConfigError: Klaviyo base URL 'https://a.klaviyo.com:abc' "
        "is not a valid URL (Invalid port: 'abc'): fix KLAVIYO_BASE_URL"
    )


# -- properties: any text is a valid value or our one-line error, never another exception --------


def key_like() -> st.SearchStrategy[str]:
    """Keys that look real, with odd characters mixed in: controls, quotes, %, non-ASCII, spaces."""
    odd = st.sampled_from(list("\n\r\t\x00\x1b\x7f\x85\u2028\u200b\ufeff \"'%\\/+&=#?é€😀\U000e0001"))
    return st.one_of(
        st.text(min_size=1),
        st.lists(st.one_of(st.sampled_from("pk_0123456789abcdef"), odd), min_size=4).map("".join),
        st.builds(lambda hex_, tail: f"pk_{hex_}{tail}", st.just(secrets.token_hex(8)), st.text()),
    )


def assert_one_line_without(message: str, key: str) -> None:
    assert message and len(message.splitlines()) == 1, message
    if len(key.strip()) >= 4:
        assert leaks(key.strip(), message) == [], message


@PROPERTY
@given(key=key_like())
def test_validate_api_key_gives_a_token_or_one_line_naming_the_variable(key: str) -> None:
    try:
        valid = validate_api_key(key)
    except KlaviyoConfigError as exc:
        assert "KLAVIYO_API_KEY" in str(exc)
        assert_one_line_without(str(exc), key)
        assert not is_one_printable_token(key.strip())
    else:
        assert valid == key.strip() and is_one_printable_token(valid)


@PROPERTY
@given(key=key_like())
def test_the_client_and_resource_accept_a_key_or_refuse_it_in_one_line(key: str) -> None:
    for make in (
        lambda: KlaviyoClient(key, pace=False),
        lambda: KlaviyoResource(api_key=key).get_client(),
        lambda: KlaviyoResource(api_key=f"klaviyo://?api_key={quote(key, safe='')}").get_client(),
    ):
        try:
            with make():
                pass
        except KlaviyoConfigError as exc:
            assert_one_line_without(str(exc), key)
        else:
            assert is_one_printable_token(key.strip())


@PROPERTY
@given(key=key_like(), in_uri=st.booleans(), raw=st.booleans())
def test_the_cli_key_is_a_token_or_a_usage_error_naming_its_origin(key: str, in_uri: bool, raw: bool) -> None:
    value = f"klaviyo://?api_key={key if raw else quote(key, safe='')}" if in_uri else key

    def key_or_usage_error(source: str | None, origin: str) -> str | None:
        try:
            got = api_key_from_source_uri(source)
        except UsageError as exc:
            assert origin in str(exc)
            assert_one_line_without(str(exc), key)
            return None
        assert is_one_printable_token(got)
        return got

    got = key_or_usage_error(value, "--source-uri")
    assert got is None or got == key.strip() or raw  # a raw key in a URI may hold &, # or %XX
    if "\x00" in key or any(0xD800 <= ord(c) <= 0xDFFF for c in key):
        return  # not storable in the environment
    with mock.patch.dict(os.environ, {"KLAVIYO_API_KEY": value}):
        key_or_usage_error(None, "KLAVIYO_API_KEY")


def url_like() -> st.SearchStrategy[str]:
    """Base URLs: free text, and URLs assembled from plausible and broken schemes, hosts and ports."""
    scheme = st.sampled_from(["https", "http", "HTTPS", "ftp", "", "https:", "http:/"])
    host = st.one_of(
        st.sampled_from(
            [
                "a.klaviyo.com",
                "localhost",
                "127.0.0.1",
                "127.5.0.1",
                "[::1]",
                "::1",
                "[::1",
                "",
                "a..b",
                "é.com",
            ]
        ),
        st.sampled_from(
            ["xn--", "user:pw@a.klaviyo.com", "a b", "10.0.0.1", "-a-.com", "a_b.com", "%41.com"]
        ),
        st.text(max_size=20),
    )
    port = st.one_of(
        st.just(""),
        st.integers(-5, 100_000).map(lambda p: f":{p}"),
        st.text(max_size=6).map(lambda p: f":{p}"),
    )
    path = st.one_of(st.sampled_from(["", "/", "/api/", "?x=1", "#f", "/\n"]), st.text(max_size=10))
    assembled = st.builds(lambda s, h, p, rest: f"{s}://{h}{p}{rest}", scheme, host, port, path)
    return st.one_of(assembled, st.text())


@PROPERTY
@given(url=url_like())
def test_a_base_url_is_usable_or_one_line_naming_the_variable(url: str) -> None:
    try:
        valid = validate_base_url(url)
    except KlaviyoConfigError as exc:
        message = str(exc)
        assert len(message.splitlines()) == 1 and "KLAVIYO_BASE_URL" in message
        if "@" in url:
            assert "pw@" not in message  # credentials are not echoed
        with pytest.raises(KlaviyoConfigError):
            KlaviyoResource(api_key="pk_x", base_url=url or " ")
        return
    parsed = httpx.URL(valid)
    assert parsed.scheme in {"https", "http"} and parsed.host
    assert parsed.port is None or 1 <= parsed.port <= 65535
    assert not parsed.userinfo and not parsed.query and not parsed.fragment
    if parsed.scheme == "http":
        host = parsed.host
        assert host == "localhost" or ipaddress.ip_address(host).is_loopback
    with KlaviyoClient("pk_x", base_url=url, pace=False) as client:  # what the client accepts, too
        assert client.base_url == valid
    assert KlaviyoResource(api_key="pk_x", base_url=url).base_url == url


@PROPERTY
@given(key=st.text(min_size=4), before=st.text(), after=st.text(), which=st.integers(0, 100))
def test_redact_leaves_no_representation_of_any_key(key: str, before: str, after: str, which: int) -> None:
    forms = sorted(key_forms(key))
    text = before + forms[which % len(forms)] + after
    masked = redact(text, key)
    assert leaks(key, masked) == []
