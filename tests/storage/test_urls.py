"""URL -> backend dispatch: sharing rules and the errors a user sees."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from omniq.errors import ConfigError
from omniq.storage.base import masked
from omniq.storage.memory import MemoryBackend
from omniq.storage.sqlite import SQLiteBackend
from omniq.storage.urls import SCHEMES, open_backends


def test_unknown_scheme_lists_valid_ones() -> None:
    with pytest.raises(ConfigError) as err:
        open_backends("mongodb://localhost/db")
    msg = str(err.value)
    assert "'mongodb'" in msg
    for scheme in ("memory://", "sqlite://", "postgresql://", "redis://", "nats://", "s3://"):
        assert scheme in msg
    assert set(SCHEMES) >= {"memory", "sqlite", "file", "s3", "gs", "abfs", "postgresql", "redis"}


def test_no_scheme_and_wrong_types() -> None:
    with pytest.raises(ConfigError, match="no scheme"):
        open_backends("omniq.db")
    with pytest.raises(ConfigError, match="tasks"):
        open_backends(None)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="results"):
        open_backends("memory://", results=42)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="storage_options"):
        open_backends("memory://", storage_options="key=1")  # type: ignore[arg-type]


def test_passwords_are_masked_in_errors() -> None:
    with pytest.raises(ConfigError) as err:
        open_backends("mysql://alice:s3cret@db.example.com/q")
    assert "s3cret" not in str(err.value) and "alice:***@" in str(err.value)


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql://bob:hunter2@localhost/omniq", "omniq.storage.postgres", "postgres"),
        ("redis://:hunter2@localhost:6379/0", "omniq.storage.redis", "redis"),
        ("nats://bob:hunter2@localhost:4222", "omniq.storage.nats", "nats"),
    ],
)
def test_missing_backend_names_the_extra(url: str, module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"{module} is installed; the message is for installs without it")
    with pytest.raises(ConfigError) as err:
        open_backends(url)
    msg = str(err.value)
    assert f"pip install 'omniq[{extra}]'" in msg
    assert "hunter2" not in msg and url.split("://")[0] in msg


def test_none_means_the_task_queue_backend() -> None:
    tq, rs, es = open_backends("memory://")
    assert isinstance(tq, MemoryBackend) and tq is rs is es


def test_equal_urls_share_one_backend(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/a.db"
    tq, rs, es = open_backends(url, url, url)
    assert isinstance(tq, SQLiteBackend) and tq is rs is es
    tq2, rs2, _ = open_backends(url, f"sqlite:///{tmp_path}/b.db")
    assert rs2 is not tq2 and tq2 is not tq  # a new call makes new connections


def test_memory_bare_is_private_named_is_shared() -> None:
    a, _, _ = open_backends("memory://")
    b, _, _ = open_backends("memory://")
    assert a is not b
    named1, _, _ = open_backends("memory://lab-queue")
    named2, rs, _ = open_backends("memory://lab-queue")
    assert isinstance(named1, MemoryBackend) and named1 is named2 is rs
    other, _, _ = open_backends("memory://other-queue")
    assert other is not named1


def test_sqlite_url_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel, _, _ = open_backends("sqlite:///sub/rel.db")
    absolute, _, _ = open_backends(f"sqlite:///{tmp_path}/abs.db")  # tmp_path starts with "/"
    mem, _, _ = open_backends("sqlite://:memory:")
    assert isinstance(rel, SQLiteBackend) and rel.path == "sub/rel.db"
    assert isinstance(absolute, SQLiteBackend) and absolute.path == f"{tmp_path}/abs.db"
    assert isinstance(mem, SQLiteBackend) and mem.in_memory
    with pytest.raises(ConfigError, match="three slashes"):
        open_backends("sqlite://rel.db")
    with pytest.raises(ConfigError, match="query"):
        open_backends("sqlite:///x.db?mode=ro")


def test_object_store_task_queue_is_a_bucket_queue() -> None:
    pytest.importorskip("s3fs")
    from omniq.storage.bucket import BucketQueueBackend

    tq, rs, es = open_backends("s3://bucket/prefix", "s3://bucket/results")
    assert isinstance(tq, BucketQueueBackend) and es is tq
    assert type(rs).__name__ == "FsspecBackend"  # results elsewhere: plain objects
    with pytest.raises(ConfigError, match="shards") as err:
        open_backends("s3://user:topsecret@bucket/prefix?shards=0")
    assert "topsecret" not in str(err.value)


def test_named_memory_results_go_to_fsspec() -> None:
    fsspec_module = pytest.importorskip("omniq.storage.fsspec")
    tq, rs, es = open_backends("memory://", "memory://omniq-test-bucket/results")
    assert isinstance(tq, MemoryBackend) and es is tq
    assert isinstance(rs, fsspec_module.FsspecBackend)


# ------------------------------------------------------------------------------------------------
# property tests: any string either opens (backends built, nothing connected) or is a ConfigError
# that names the role and never shows a password
# ------------------------------------------------------------------------------------------------
from hypothesis import HealthCheck, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from omniq.storage.urls import scheme_of  # noqa: E402
from tests.helpers import examples  # noqa: E402

URL_EXAMPLES = examples(500)
SECRET = "Pw0rdXyzzy"

_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40)
_url_chars = st.lists(
    st.sampled_from([*"abcXYZ019-._~:/?#[]@!$&'()*+,;=% \\\x00é", "//", "///", ":memory:", "..", "%zz"]),
    max_size=12,
).map("".join)
_scheme = st.sampled_from([*SCHEMES, "SQLite", "MEMORY", "Redis", "mongodb", "", "sqlite3", "s3a", "http"])
_userinfo = st.sampled_from(["", f"user:{SECRET}@", f":{SECRET}@", "user@", f"u:{SECRET}@@", "@"])
_host = st.sampled_from(["", "localhost", "127.0.0.1", "[::1]", "h:0", "h:65536", "h:-1", "h:port",
                         "[bad", "h:99999999999", "bucket", ":memory:", "/", "//"])
_urls = st.one_of(
    _text,
    st.builds(lambda s, sep, u, h, rest: f"{s}{sep}{u}{h}{rest}",
              _scheme, st.sampled_from(["://", ":/", ":", "://", "//"]), _userinfo, _host, _url_chars),
)


def _has_password(url: str) -> bool:
    """True when ``url`` carries SECRET as the password of its authority (user:SECRET@host)."""
    _, sep, rest = url.partition("://")
    return bool(sep) and f":{SECRET}@" in rest.split("/", 1)[0]


def _check(msg: str, role: str, url: str) -> None:
    if _has_password(url):
        assert SECRET not in msg, f"password shown: {msg}"
    assert role in msg, f"the message does not name {role!r}: {msg}"
    assert len(msg) < 2000


@given(_text)
@example("")
@example("://")
@example("SQLITE:///x.db")
def test_scheme_of_any_string(url: str) -> None:
    try:
        scheme = scheme_of(url)
    except ConfigError as exc:
        assert "valid schemes" in str(exc)
    else:
        assert scheme in SCHEMES and url.lower().startswith(scheme + "://")


@given(url=_urls, role=st.sampled_from(["tasks", "results", "events"]))
@example(url="redis://h:65536/0", role="tasks")
@example(url="redis://h:port/0", role="tasks")
@example(url=f"postgresql://user:{SECRET}@h:99999999999/db", role="tasks")
@example(url=f"nats://user:{SECRET}@[bad", role="tasks")
@example(url=f"redis://:{SECRET}@[::1", role="results")
@example(url="sqlite://x.db", role="events")
@example(url="sqlite:///", role="tasks")
@example(url="sqlite:///\x00", role="tasks")
@example(url="memory://a?b", role="tasks")
@example(url="file://", role="results")
@example(url=f"://:{SECRET}@\x1f@", role="tasks")  # no scheme at all: still masked (found by hypothesis)
@example(url=f"mongo db://u:{SECRET}@h", role="events")
@settings(max_examples=URL_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_url_opens_or_raises_config_error_naming_the_role(url: str, role: str) -> None:
    kwargs = {"tasks": url} if role == "tasks" else {"tasks": "memory://", role: url}
    try:
        backends = open_backends(**kwargs)
    except ConfigError as exc:
        _check(str(exc), role, url)
    else:
        assert len(backends) == 3


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:p@ss@host:6379/0", "redis://:***@host:6379/0"),  # "@" inside the password
        ("postgresql://bob:s3cret@h/db", "postgresql://bob:***@h/db"),
        ("nats://s3cr3t-token@h:4222", "nats://***@h:4222"),  # a NATS token is the secret
        ("postgresql://bob@h/db", "postgresql://bob@h/db"),  # a user name alone is not
        ("file:///data/a@b/c", "file:///data/a@b/c"),  # "@" in a path is not user info
        ("s3://bucket/key@x", "s3://bucket/key@x"),
        ("redis://u:pa/ss@h/0", "redis://u:***@h/0"),  # "/" inside the password
        ("rediss://default:s3cr#et@h", "rediss://default:***@h"),
        ("://:s3cret@\x1f@", "://:***@"),  # an empty scheme is masked the same
        ("no such+scheme://u:s3cret@h/x", "no such+scheme://u:***@h/x"),  # so is a garbled one
        ("u:s3cret@h", "u:***@h"),  # no "://" but user:password@host all the same
        ("omniq.db", "omniq.db"),
    ],
)
def test_masked_hides_the_whole_secret(url: str, shown: str) -> None:
    assert masked(url) == shown
