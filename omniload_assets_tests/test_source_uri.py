"""The one ``klaviyo://?api_key=...`` parser: the key, or one line naming the flag or variable."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniload_assets.klaviyo.errors import KlaviyoConfigError
from omniload_assets.klaviyo.source_uri import api_key_from_key_or_uri, api_key_from_uri

PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize(
    ("uri", "key"),
    [
        ("klaviyo://?api_key=pk_x", "pk_x"),
        ("  klaviyo://?api_key=pk_x  ", "pk_x"),
        ("klaviyo://?api_key=&api_key=pk_y", "pk_y"),
        ("klaviyo://?api_key=%20pk_x%20", "pk_x"),
    ],
)
def test_the_key_of_a_uri(uri: str, key: str) -> None:
    assert api_key_from_uri(uri, "--source-uri") == key
    assert api_key_from_key_or_uri(uri) == key


def test_the_scheme_of_a_uri_is_read_in_any_case() -> None:
    assert api_key_from_uri("KLAVIYO://?api_key=pk_x", "--source-uri") == "pk_x"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("klaviyo://?key=pk_x", "--source-uri has no api_key: use klaviyo://?api_key=pk_..."),
        ("klaviyo://?api_key=", "--source-uri has no api_key: use klaviyo://?api_key=pk_..."),
        (
            "klaviyo://[?api_key=pk_x",
            "--source-uri must look like klaviyo://?api_key=pk_... (it is not a URI)",
        ),
        ("pk_x", "--source-uri must look like klaviyo://?api_key=pk_... (got scheme '')"),
        (
            "https://?api_key=pk_x",
            "--source-uri must look like klaviyo://?api_key=pk_... (got scheme 'https')",
        ),
        ("  ", "no Klaviyo API key: set --source-uri to a private API key (pk_...)"),
        (
            "klaviyo://?api_key=pk%0Ax",
            "the api_key in --source-uri is not a single printable token (it contains a line break): "
            "paste the key again",
        ),
        (
            "klaviyo://?api_key=pk\tx",
            "--source-uri is not a single printable token (it contains a tab): paste the key again",
        ),
    ],
)
def test_a_bad_uri_is_one_line_naming_its_origin(uri: str, message: str) -> None:
    with pytest.raises(KlaviyoConfigError) as caught:
        api_key_from_uri(uri, "--source-uri")
    assert str(caught.value) == message


def test_the_variable_takes_a_bare_key_or_a_uri() -> None:
    assert api_key_from_key_or_uri(" pk_x\n") == "pk_x"
    with pytest.raises(KlaviyoConfigError) as caught:
        api_key_from_key_or_uri("klaviyo://?key=pk_x")
    assert str(caught.value) == (
        "the klaviyo:// URI in KLAVIYO_API_KEY has no api_key: use klaviyo://?api_key=pk_... "
        "or the bare private API key"
    )
    with pytest.raises(KlaviyoConfigError, match="^KLAVIYO_API_KEY is not a single printable token"):
        api_key_from_key_or_uri("pk x")


@PROPERTY
@given(text=st.text())
def test_any_text_as_a_klaviyo_uri_of_the_variable_is_a_key_or_a_config_error(text: str) -> None:
    try:
        key = api_key_from_key_or_uri(f"klaviyo://{text}")
    except KlaviyoConfigError as exc:
        assert len(str(exc).splitlines()) == 1 and "KLAVIYO_API_KEY" in str(exc)
    else:
        assert key and all(c.isprintable() and not c.isspace() for c in key)
