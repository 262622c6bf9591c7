"""The API key never leaves the process except in the Authorization header to the configured
Klaviyo host: not in logs, exceptions, run storage, the UI's resource config, or DuckDB; in no
representation (raw, repr, bytes repr, JSON, percent-encoded), whatever characters it holds."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus

import dagster as dg
import duckdb
import pytest
from dagster._core.remote_representation.external_data import RepositorySnap
from dagster._serdes import serialize_value

from omniload_assets.assets import asset_key
from omniload_assets.klaviyo.catalog import get_table
from omniload_assets.klaviyo.client import DEFAULT_BASE_URL, KlaviyoClient
from omniload_assets.klaviyo.resource import KlaviyoResource
from omniload_assets_tests.conftest import SIM_END, SIM_START
from omniload_assets_tests.harness import error_messages, fast_resources, range_tags, reason
from omniload_assets_tests.simulator import KlaviyoSimulator

FIRST_DAY = SIM_START.date()
LAST_DAY = SIM_END.date()

#: Keys that pass validation, each shaped to be mangled differently by escaping and encoding:
#: hex only; quotes, % (a percent-encoding in itself), a backslash and Latin-1; beyond Latin-1.
KEY_SHAPES = {
    "hex": "pk_{hex}",
    "quoted": "pk_\"quoted'%41\u00e9\\{hex}",
    "unicode": "pk_\u20ac\u6f22{hex}\U0001f511",
}
#: Keys with characters a key cannot hold: refused before any request.
BAD_KEY_SHAPES = {
    "line-feed": "pk_{hex}\nsecond line",
    "crlf": "pk_{hex}\r\nX-Injected: 1",
    "tab": "pk_{hex}\tx",
    "escape": "pk_\x1b[31m{hex}",
    "delete": "pk_{hex}\x7f",
    "zero-width": "pk_\u200b{hex}",
    "line-separator": "pk_{hex}\u2028x",
    "quoted-newline": "pk_\"q'%0A\u00e9\n{hex}",
}


def make_key(shape: str) -> str:
    """A key of ``shape`` (see ``KEY_SHAPES``) no other string in the run could contain by chance."""
    return shape.format(hex=secrets.token_hex(20))


def key_forms(key: str) -> set[str]:
    """The key as a message, log or file could show it: raw, repr (either quote escaped), ascii(),
    bytes repr (UTF-8 and Latin-1), JSON (ASCII or not), percent-encoded, and escaped twice."""
    forms = {
        key,
        repr(key)[1:-1],
        repr(key + "'\"")[1:-4],  # as inside a repr that escapes '
        ascii(key)[1:-1],
        json.dumps(key)[1:-1],
        json.dumps(key, ensure_ascii=False)[1:-1],
        json.dumps(repr(key)[1:-1])[1:-1],
        repr(repr(key)[1:-1])[1:-1],
        quote(key),
        quote(key, safe=""),
        quote_plus(key),
    }
    for encoding in ("utf-8", "latin-1"):
        try:
            raw = key.encode(encoding)
        except UnicodeEncodeError:
            continue
        forms |= {repr(raw)[2:-1], json.dumps(repr(raw)[2:-1])[1:-1], quote(raw), quote_plus(raw)}
    return forms


def leaks(key: str, *texts: str) -> list[str]:
    """The forms of ``key`` (see ``key_forms``) found in ``texts``."""
    return sorted({form for form in key_forms(key) for text in texts if form in text})


@pytest.fixture(params=["hex", "quoted"])
def secret_key(request: pytest.FixtureRequest) -> str:
    """A key no other string in the run could contain by chance, of the shapes the simulator can
    accept (it reads headers as Latin-1, so "unicode" can only be rejected: see below)."""
    return make_key(KEY_SHAPES[request.param])


@pytest.fixture
def secret_simulator(secret_key: str) -> Iterator[KlaviyoSimulator]:
    with KlaviyoSimulator(seed=3, api_key=secret_key, start=SIM_START, end=SIM_END, rate_limits=False) as sim:
        yield sim


@pytest.fixture
def debug_log(tmp_path: Path) -> Iterator[Path]:
    """Every Python log record of every library, DEBUG and up, into a file the test scans."""
    path = tmp_path / "debug.log"
    handler = logging.FileHandler(path)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield path
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def files_containing(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def files_leaking(root: Path, key: str) -> list[str]:
    """Files under ``root`` holding a form of ``key``, as UTF-8, or as Latin-1 (the header's encoding)."""
    needles = {form.encode() for form in key_forms(key)}
    needles.add(key.encode("latin-1", "replace"))
    return sorted({path for needle in needles for path in files_containing(root, needle)})


def duckdb_text(db_path: Path) -> str:
    """Every value of every table in the DuckDB file, as text."""
    out = []
    with duckdb.connect(str(db_path), read_only=True) as conn:
        tables = conn.execute("SELECT database_name, schema_name, table_name FROM duckdb_tables()").fetchall()
        for db, schema, table in tables:
            rows = conn.execute(f'SELECT * FROM "{db}"."{schema}"."{table}"').fetchall()
            out.append(repr(rows))
    return "\n".join(out)


def test_the_key_appears_nowhere_a_succeeding_and_failing_run_wrote(
    secret_key, secret_simulator, tmp_path, monkeypatch, capfd, debug_log
) -> None:
    sim = secret_simulator
    db_path = tmp_path / "warehouse" / "klaviyo.duckdb"
    staging = tmp_path / "staging"
    for name, value in {
        "KLAVIYO_API_KEY": secret_key,
        "KLAVIYO_BASE_URL": sim.base_url,
        "OMNILOAD_START_DATE": FIRST_DAY.isoformat(),
        "OMNILOAD_DUCKDB_PATH": str(db_path),
        "OMNILOAD_STAGING_DIR": str(staging),
    }.items():
        monkeypatch.setenv(name, value)
    from omniload_assets.definitions import build_definitions

    defs = build_definitions()
    events = defs.get_assets_def(asset_key(get_table("events")))
    tags = defs.get_assets_def(asset_key(get_table("tags")))
    profiles = defs.get_assets_def(asset_key(get_table("profiles")))
    resources = fast_resources(defs, max_retries=1)
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    with dg.instance_for_test(temp_dir=str(dagster_home)) as instance:
        ok = dg.materialize(
            [events], resources=resources, instance=instance, tags=range_tags(FIRST_DAY, LAST_DAY)
        )
        assert ok.success
        assert dg.materialize([tags], resources=resources, instance=instance).success
        # Failures: a missing scope (403), and retries used up on 503s.
        sim.scopes.discard("profiles:read")
        denied = dg.materialize(
            [profiles],
            resources=resources,
            instance=instance,
            tags=range_tags(FIRST_DAY, LAST_DAY),
            raise_on_error=False,
        )
        assert not denied.success and "profiles:read" in reason(denied)
        sim.set_fault("503")
        down = dg.materialize([tags], resources=resources, instance=instance, raise_on_error=False)
        assert not down.success and "HTTP 503" in reason(down)
        # Everything the instance holds about the runs, as Dagster would show it.
        stored = [
            serialize_value(instance.all_logs(r.run_id)) + serialize_value(instance.get_run_by_id(r.run_id))
            for r in (ok, denied, down)
        ]
    out, err = capfd.readouterr()

    assert sim.stats.total_requests > 10
    assert leaks(secret_key, *stored) == [], "key in the event log or run record"
    assert leaks(secret_key, out, err) == [], "key in stdout/stderr"
    assert leaks(secret_key, error_messages(denied) + error_messages(down)) == []
    assert debug_log.stat().st_size > 0
    assert files_leaking(tmp_path, secret_key) == [], "key in a file the runs wrote"
    assert leaks(secret_key, duckdb_text(db_path)) == []


@pytest.mark.parametrize("shape", list(KEY_SHAPES))
def test_a_rejected_key_is_not_echoed_anywhere(
    defs, simulator, instance, capfd, debug_log, monkeypatch, shape
):
    wrong = make_key(KEY_SHAPES[shape])
    monkeypatch.setenv("KLAVIYO_API_KEY", wrong)
    from omniload_assets.definitions import build_definitions

    result = dg.materialize(
        [defs.get_assets_def(asset_key(get_table("tags")))],
        resources=fast_resources(build_definitions()),
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success and "401" in reason(result)
    assert simulator.stats.total_requests == 1  # a 401 is not retried
    out, err = capfd.readouterr()
    assert leaks(wrong, out, err, error_messages(result), debug_log.read_text()) == []
    assert leaks(wrong, serialize_value(instance.all_logs(result.run_id))) == []


@pytest.mark.parametrize("shape", list(BAD_KEY_SHAPES))
def test_a_key_with_a_control_character_is_refused_before_any_request(
    defs, simulator, instance, capfd, debug_log, monkeypatch, tmp_path, shape
):
    bad = make_key(BAD_KEY_SHAPES[shape])
    monkeypatch.setenv("KLAVIYO_API_KEY", bad)
    from omniload_assets.definitions import build_definitions

    result = dg.materialize(
        [defs.get_assets_def(asset_key(get_table("tags")))],
        resources=fast_resources(build_definitions()),
        instance=instance,
        raise_on_error=False,
    )
    assert not result.success
    assert simulator.stats.total_requests == 0
    line = reason(result)
    assert "KLAVIYO_API_KEY is not a single printable token (it contains " in line
    assert "paste the key again" in line
    out, err = capfd.readouterr()
    assert leaks(bad, out, err, error_messages(result), debug_log.read_text()) == []
    assert leaks(bad, serialize_value(instance.all_logs(result.run_id))) == []
    assert files_leaking(tmp_path, bad) == []


def test_the_ui_resource_config_shows_the_variable_not_the_key(defs, simulator) -> None:
    snap = RepositorySnap.from_def(defs.get_repository_def())
    assert simulator.api_key not in serialize_value(snap)
    (klaviyo,) = [r for r in snap.resources if r.name == "klaviyo"]
    assert "KLAVIYO_API_KEY" in repr(klaviyo.configured_values["api_key"])
    # Copies made for overrides keep the EnvVar rather than resolving it.
    copy = defs.resources["klaviyo"].model_copy(update={"max_retries": 1})
    assert isinstance(copy.api_key, dg.EnvVar)
    assert simulator.api_key not in repr(copy) + str(copy)


def test_links_next_to_another_host_is_refused_and_gets_no_key(defs, simulator, db_path, instance) -> None:
    with KlaviyoSimulator(seed=1, api_key="pk_other", rate_limits=False) as elsewhere:
        simulator.link_base = elsewhere.base_url  # same loopback address, another port
        tags = defs.get_assets_def(asset_key(get_table("tags")))
        result = dg.materialize(
            [tags], resources=fast_resources(defs, page_size=5), instance=instance, raise_on_error=False
        )
        assert not result.success
        assert "links.next on another host" in reason(result)
        assert "refusing to send the API key" in reason(result)
        assert elsewhere.stats.total_requests == 0
    assert not db_path.exists() or "tags" not in duckdb_text(db_path)
    if db_path.exists():  # no tags table at all, not merely no row mentioning "tags"
        with duckdb.connect(str(db_path), read_only=True) as conn:
            query = "SELECT 1 FROM duckdb_tables() WHERE table_name = 'tags'"
            assert not conn.execute(query).fetchall()


def test_https_is_the_default_and_plain_http_only_on_loopback(monkeypatch) -> None:
    monkeypatch.delenv("KLAVIYO_BASE_URL", raising=False)
    monkeypatch.setenv("KLAVIYO_API_KEY", "pk_x")
    from omniload_assets.definitions import build_definitions

    assert DEFAULT_BASE_URL == "https://a.klaviyo.com"
    assert build_definitions().resources["klaviyo"].base_url == DEFAULT_BASE_URL
    assert KlaviyoResource(api_key="pk_x").base_url.startswith("https://")
    for url in ("http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:9", "http://127.5.0.1"):
        with KlaviyoClient("pk_x", base_url=url) as client:
            assert client.base_url == url
