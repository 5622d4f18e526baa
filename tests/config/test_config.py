"""Configuration: sources, OMNIQ_* overrides, precedence, error messages, URLs, logging."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniq import config as omniq_config
from omniq.config import (
    CONFIG_KEYS,
    LoggingConfig,
    configure_logging,
    env_var,
    load_config,
    read_env,
    resolve_urls,
)
from omniq.config import settings as defaults
from omniq.config.env import RULES
from omniq.errors import ConfigError
from omniq.models import OmniQConfig
from tests.helpers import examples


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OMNIQ_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str, name: str = "omniq.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------ sources


def test_defaults_come_from_settings() -> None:
    cfg = load_config()
    assert cfg == OmniQConfig()
    assert cfg.concurrency == defaults.CONCURRENCY
    assert cfg.default_worker == defaults.DEFAULT_WORKER
    assert cfg.lease == defaults.LEASE


def test_every_config_key_has_a_rule_and_a_variable() -> None:
    assert set(RULES) == set(CONFIG_KEYS) == set(msgspec.structs.asdict(OmniQConfig()))
    assert env_var("task_queue_type") == "OMNIQ_TASK_QUEUE_TYPE"


def test_dict_source_is_checked_and_normalized() -> None:
    cfg = load_config(
        {
            "concurrency": 4,
            "default_worker": "Thread",
            "log_level": "debug",
            "queues": "a, b",
            "task_queue_type": "SQLite",
            "result_storage_type": "s3://bucket/runs",
            "task_ttl": 60,
            "lease": 5,
            "max_deliveries": 1,
            "storage_options": {"anon": True},
        }
    )
    assert cfg.concurrency == 4
    assert cfg.default_worker == "thread"
    assert cfg.log_level == "DEBUG"
    assert cfg.queues == ["a", "b"]
    assert cfg.task_queue_type == "sqlite"
    assert cfg.result_storage_type == "s3://bucket/runs"
    assert cfg.task_ttl == 60.0 and isinstance(cfg.task_ttl, float)
    assert cfg.lease == 5.0
    assert cfg.storage_options == {"anon": True}


def test_omniqconfig_source() -> None:
    cfg = load_config(OmniQConfig(concurrency=7, default_worker="async"))
    assert cfg.concurrency == 7 and cfg.default_worker == "async"


def test_omniqconfig_source_is_validated_too() -> None:
    with pytest.raises(ConfigError, match=r"OmniQConfig: concurrency=-1 is not valid"):
        load_config(OmniQConfig(concurrency=-1))


def test_yaml_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "concurrency: 3\ndefault_worker: thread\ntask_ttl: 2.5\nqueues: [high, low]\n"
        "base_dir: /data/q\n",
    )
    cfg = load_config(path)
    assert (cfg.concurrency, cfg.default_worker, cfg.task_ttl) == (3, "thread", 2.5)
    assert cfg.queues == ["high", "low"]
    assert load_config(str(path)) == cfg


def test_yaml_omniq_section_and_empty_file(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "omniq:\n  concurrency: 9\n")).concurrency == 9
    assert load_config(write(tmp_path, "", "empty.yaml")) == OmniQConfig()


def test_missing_yaml_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=f"config file not found: {missing}"):
        load_config(missing)


def test_invalid_yaml_names_the_path(tmp_path: Path) -> None:
    path = write(tmp_path, "concurrency: [1, 2\n")
    with pytest.raises(ConfigError, match=f"config file {path} is not valid YAML"):
        load_config(path)
    path = write(tmp_path, "- a\n- b\n", "list.yaml")
    with pytest.raises(ConfigError, match="must hold a mapping of config keys, not list"):
        load_config(path)


def test_yaml_errors_name_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "concurrency: two\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: concurrency='two' is not valid: expected an integer >= 0"


def test_bad_source_type() -> None:
    with pytest.raises(ConfigError, match="not int"):
        load_config(3)  # type: ignore[arg-type]


def test_unknown_key_suggests_the_closest() -> None:
    with pytest.raises(ConfigError) as info:
        load_config({"concurency": 2})
    message = str(info.value)
    assert "unknown config key 'concurency' in config dict" in message
    assert "Did you mean 'concurrency'?" in message
    with pytest.raises(ConfigError, match="Did you mean 'task_queue_type'"):
        load_config({"TASK_QUEUE_TYPE": "memory"})
    with pytest.raises(ConfigError, match="unknown config key 'zzz'"):
        load_config(zzz=1)
    with pytest.raises(ConfigError, match="unknown config key 1"):
        load_config({1: 2})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("concurrency", "2", "an integer >= 0"),
        ("concurrency", True, "an integer >= 0"),
        ("concurrency", 1.0, "an integer >= 0"),
        ("concurrency", -1, "an integer >= 0"),
        ("max_deliveries", 0, "an integer >= 1"),
        ("lease", 0, "a number of seconds > 0"),
        ("lease", None, "a number of seconds > 0"),
        ("lease", float("inf"), "a number of seconds > 0"),
        ("task_ttl", -1, "a number of seconds > 0, or None"),
        ("result_ttl", "1h", "a number of seconds > 0, or None"),
        ("default_worker", "fork", "one of async, thread, process, gevent"),
        ("log_level", "verbose", "one of DEBUG, INFO, WARNING, ERROR, DISABLED"),
        ("log_level", 10, "one of DEBUG"),
        ("task_queue_type", "mysql", "a short name (sqlite, memory) or a full URL"),
        ("task_queue_type", None, "a short name (sqlite, memory)"),
        ("event_storage_type", "", "a short name (sqlite, memory)"),
        ("database_url", "omniq.db", "a URL such as sqlite:///path.db, or None"),
        ("base_dir", 5, "a directory path"),
        ("queues", [], "a list of queue names"),
        ("queues", ["a", 1], "a list of queue names"),
        ("storage_options", {1: 2}, "a mapping with str keys"),
    ],
)
def test_wrong_values_name_the_key(key: str, value: Any, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config({key: value})
    assert str(info.value).startswith(f"config dict: {key}={value!r} is not valid: expected ")
    assert expected in str(info.value)


def test_override_errors_name_the_argument() -> None:
    with pytest.raises(ConfigError, match=r"^concurrency='x' is not valid: expected an integer"):
        load_config(concurrency="x")
    with pytest.raises(ConfigError, match=r"^tasks='omniq.db' is not valid: expected a short"):
        load_config(tasks="omniq.db")
    with pytest.raises(ConfigError, match=r"^worker='fork' is not valid"):
        load_config(worker="fork")


def test_constructor_argument_aliases() -> None:
    cfg = load_config(tasks="memory", results="file:///r", events="memory", worker="thread")
    assert cfg.task_queue_type == "memory" and cfg.result_storage_type == "file:///r"
    assert cfg.event_storage_type == "memory" and cfg.default_worker == "thread"
    with pytest.raises(ConfigError, match="tasks and task_queue_type both set"):
        load_config(tasks="memory", task_queue_type="sqlite")
    assert load_config(tasks=None, task_queue_type="memory").task_queue_type == "memory"


# ------------------------------------------------------------------------------ environment


def test_env_overrides_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "OMNIQ_BASE_DIR": "/srv/omniq",
        "OMNIQ_LOG_LEVEL": "info",
        "OMNIQ_TASK_QUEUE_TYPE": "memory",
        "OMNIQ_RESULT_STORAGE_TYPE": "file:///tmp/results",
        "OMNIQ_EVENT_STORAGE_TYPE": "none",
        "OMNIQ_DATABASE_URL": "sqlite:////srv/q.db",
        "OMNIQ_DEFAULT_WORKER": "thread",
        "OMNIQ_CONCURRENCY": " 8 ",
        "OMNIQ_TASK_TTL": "30",
        "OMNIQ_RESULT_TTL": "1.5e3",
        "OMNIQ_LEASE": "12.5",
        "OMNIQ_MAX_DELIVERIES": "5",
        "OMNIQ_QUEUES": "high, low,,",
        "OMNIQ_MEMORY_LIMIT": "2 GiB",
        "OMNIQ_STORAGE_OPTIONS": '{"anon": true}',
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    cfg = load_config()
    assert cfg == OmniQConfig(
        base_dir="/srv/omniq",
        log_level="INFO",
        task_queue_type="memory",
        result_storage_type="file:///tmp/results",
        event_storage_type=None,
        database_url="sqlite:////srv/q.db",
        default_worker="thread",
        concurrency=8,
        task_ttl=30.0,
        result_ttl=1500.0,
        lease=12.5,
        max_deliveries=5,
        queues=["high", "low"],
        memory_limit=2 * 1024**3,
        storage_options={"anon": True},
    )


def test_empty_env_value_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_CONCURRENCY", "")
    monkeypatch.setenv("OMNIQ_DEFAULT_WORKER", "   ")
    assert load_config({"concurrency": 5}).concurrency == 5
    assert read_env() == {}


def test_env_none_clears_a_file_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_TASK_TTL", "None")
    monkeypatch.setenv("OMNIQ_QUEUES", "*")
    cfg = load_config({"task_ttl": 10, "queues": ["a"]})
    assert cfg.task_ttl is None and cfg.queues is None


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("OMNIQ_CONCURRENCY", "two", "an integer >= 0"),
        ("OMNIQ_CONCURRENCY", "-1", "an integer >= 0"),
        ("OMNIQ_CONCURRENCY", "2.5", "an integer >= 0"),
        ("OMNIQ_MAX_DELIVERIES", "0", "an integer >= 1"),
        ("OMNIQ_LEASE", "none", "a number of seconds > 0"),
        ("OMNIQ_LEASE", "nan", "a number of seconds > 0"),
        ("OMNIQ_TASK_TTL", "soon", "a number of seconds > 0, or 'none'"),
        ("OMNIQ_RESULT_TTL", "0", "a number of seconds > 0, or 'none'"),
        ("OMNIQ_DEFAULT_WORKER", "fork", "one of async, thread, process, gevent"),
        ("OMNIQ_LOG_LEVEL", "loud", "one of DEBUG, INFO, WARNING, ERROR, DISABLED (any case)"),
        ("OMNIQ_TASK_QUEUE_TYPE", "mysql", "a short name (sqlite, memory) or a full URL"),
        ("OMNIQ_RESULT_STORAGE_TYPE", "disk", "or 'none' (same as the task queue)"),
        ("OMNIQ_DATABASE_URL", "omniq.db", "a URL such as sqlite:///path.db, or 'none'"),
        ("OMNIQ_QUEUES", ",,", "queue names separated by commas"),
        ("OMNIQ_STORAGE_OPTIONS", "anon=1", "a JSON object"),
        ("OMNIQ_STORAGE_OPTIONS", "[1]", "a JSON object"),
    ],
)
def test_bad_env_values_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, expected: str
) -> None:
    monkeypatch.setenv(name, raw)
    with pytest.raises(ConfigError) as info:
        load_config()
    message = str(info.value)
    assert message.startswith(f"{name}={raw!r} is not valid: expected ")
    assert expected in message


def test_the_documented_example_message(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OMNIQ_CONCURRENCY", "two")
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == "OMNIQ_CONCURRENCY='two' is not valid: expected an integer >= 0"


def test_read_env_accepts_a_mapping() -> None:
    assert read_env({"OMNIQ_CONCURRENCY": "3", "OTHER": "x"}) == {"concurrency": 3}


# ------------------------------------------------------------------------------ precedence


def test_precedence_overrides_env_file_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(tmp_path, "concurrency: 1\ndefault_worker: thread\nlease: 7\n")
    assert load_config().concurrency == defaults.CONCURRENCY
    assert load_config(path).concurrency == 1
    monkeypatch.setenv("OMNIQ_CONCURRENCY", "2")
    cfg = load_config(path)
    assert (cfg.concurrency, cfg.default_worker, cfg.lease) == (2, "thread", 7.0)
    cfg = load_config(path, concurrency=3, default_worker=None)
    assert (cfg.concurrency, cfg.default_worker) == (3, "thread")  # None = not given
    cfg = load_config({"concurrency": 1}, concurrency=0)
    assert cfg.concurrency == 0  # 0 is a value, not "not given"


# ------------------------------------------------------------------------------ property


env_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=12,
)


@given(st.sampled_from(sorted(RULES)), env_text | st.sampled_from(["1", "0", "-3", "none", "a,b"]))
@settings(max_examples=examples(400), deadline=None)
def test_any_env_string_gives_a_config_or_a_config_error(key: str, raw: str) -> None:
    name = env_var(key)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(name, raw)
        try:
            cfg = load_config()
        except ConfigError as exc:
            assert str(exc).startswith(f"{name}={raw!r} is not valid: expected ")
            return
    assert isinstance(cfg, OmniQConfig)
    assert cfg.concurrency >= 0 and cfg.max_deliveries >= 1 and cfg.lease > 0
    assert cfg.default_worker in defaults.WORKER_KINDS
    assert cfg.log_level in defaults.LOG_LEVELS
    assert cfg.queues is None or (cfg.queues and all(q.strip() == q and q for q in cfg.queues))
    resolve_urls(cfg)  # a valid config always resolves


@given(st.sampled_from(sorted(RULES)), st.from_type(object).filter(lambda v: v is not None))
@settings(max_examples=examples(200), deadline=None)
def test_any_dict_value_gives_a_config_or_a_config_error(key: str, value: Any) -> None:
    try:
        load_config({key: value})
    except ConfigError as exc:
        assert f"{key}=" in str(exc)


# ------------------------------------------------------------------------------ URLs


def test_resolve_sqlite_short_name() -> None:
    assert resolve_urls(OmniQConfig()) == ("sqlite:///.omniq/omniq.db",) * 3
    cfg = OmniQConfig(base_dir="/data/q")
    assert resolve_urls(cfg)[0] == "sqlite:////data/q/omniq.db"
    cfg = OmniQConfig(database_url="sqlite:////elsewhere.db")
    assert resolve_urls(cfg) == ("sqlite:////elsewhere.db",) * 3
    home = os.path.expanduser("~")
    assert resolve_urls(OmniQConfig(base_dir="~/q"))[0] == f"sqlite:///{home}/q/omniq.db"


def test_resolve_memory_urls_and_mixes() -> None:
    cfg = OmniQConfig(
        task_queue_type="memory", result_storage_type="s3://b/p", event_storage_type="sqlite"
    )
    assert resolve_urls(cfg) == ("memory://", "s3://b/p", "sqlite:///.omniq/omniq.db")
    cfg = OmniQConfig(task_queue_type="redis://localhost:6379/0", result_storage_type="memory")
    assert resolve_urls(cfg) == (
        "redis://localhost:6379/0",
        "memory://",
        "redis://localhost:6379/0",
    )


def test_resolve_unknown_short_name_lists_valid_ones() -> None:
    with pytest.raises(
        ConfigError, match=r"task_queue_type='postgres' is not valid: .*sqlite, memory"
    ):
        resolve_urls(OmniQConfig(task_queue_type="postgres"))
    with pytest.raises(ConfigError, match=r"event_storage_type='x'"):
        resolve_urls(OmniQConfig(event_storage_type="x"))


# ------------------------------------------------------------------------------ logging


@pytest.fixture
def omniq_logger(monkeypatch: pytest.MonkeyPatch):
    """The "omniq" logger, restored afterwards. Tests that need an unconfigured root logger
    call ``bare_root`` in their body: pytest adds its capture handler to root after fixtures."""
    logger = logging.getLogger("omniq")
    monkeypatch.setattr(logger, "handlers", list(logger.handlers))
    monkeypatch.setattr(logger, "level", logger.level)
    return logger


def bare_root(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])


def test_null_handler_by_default() -> None:
    handlers = logging.getLogger("omniq").handlers
    assert any(isinstance(h, logging.NullHandler) for h in handlers)


def test_configure_logging_attaches_one_handler(
    omniq_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare_root(monkeypatch)
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    configure_logging("INFO", stream=stream)
    ours = [h for h in omniq_logger.handlers if isinstance(h, logging.StreamHandler)]
    assert len(ours) == 1
    logging.getLogger("omniq.workers").info("hello")
    logging.getLogger("omniq").debug("hidden")
    assert "hello" in stream.getvalue() and "hidden" not in stream.getvalue()
    assert stream.getvalue().count("hello") == 1


def test_disabled_silences(omniq_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch) -> None:
    bare_root(monkeypatch)
    stream = io.StringIO()
    configure_logging("DEBUG", stream=stream)
    configure_logging("disabled")
    logging.getLogger("omniq.core").critical("nothing")
    assert stream.getvalue() == ""


def test_no_own_handler_when_application_configured_logging(
    omniq_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.NullHandler()])
    configure_logging("INFO")
    assert not any(type(h) is not logging.NullHandler for h in omniq_logger.handlers)
    assert omniq_logger.level == logging.INFO


def test_logging_config_and_bad_levels(
    omniq_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare_root(monkeypatch)
    stream = io.StringIO()
    LoggingConfig(level="warning", format="%(levelname)s|%(message)s").apply(stream)
    logging.getLogger("omniq").warning("careful")
    assert stream.getvalue() == "WARNING|careful\n"
    with pytest.raises(ConfigError, match="log_level='LOUD' is not valid"):
        configure_logging("LOUD")
    with pytest.raises(ConfigError, match="log_level=True"):
        configure_logging(True)


def test_package_reexports() -> None:
    for name in omniq_config.__all__:
        assert getattr(omniq_config, name) is not None
    assert "load_config" in dir(omniq_config)
    with pytest.raises(AttributeError):
        omniq_config.nope  # noqa: B018


# ------------------------------------------------------------------------------ memory_limit


def test_memory_limit_from_a_dict_yaml_env_and_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_config().memory_limit is None
    assert load_config({"memory_limit": "4GB"}).memory_limit == 4_000_000_000
    assert load_config({"memory_limit": 1_000_000}).memory_limit == 1_000_000
    f = tmp_path / "c.yaml"
    f.write_text("memory_limit: 512 MiB\n")
    assert load_config(str(f)).memory_limit == 512 * 1024**2
    monkeypatch.setenv("OMNIQ_MEMORY_LIMIT", "1GB")
    assert load_config(str(f)).memory_limit == 10**9  # the environment over the file
    assert load_config(str(f), memory_limit="3GB").memory_limit == 3 * 10**9  # arguments over both
    monkeypatch.setenv("OMNIQ_MEMORY_LIMIT", "none")
    assert load_config({"memory_limit": "4GB"}).memory_limit is None


@pytest.mark.parametrize("bad", ["lots", "-1GB", 0, "4 XB", True, 1.5])
def test_bad_memory_limit_names_the_key_and_what_is_valid(bad: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"memory_limit=.* is not valid: expected a size such as '4GB'"):
        load_config({"memory_limit": bad})
    with pytest.raises(ConfigError, match=r"^memory_limit=.* is not valid: expected a size"):
        load_config(memory_limit=bad)
    if isinstance(bad, str):
        monkeypatch.setenv("OMNIQ_MEMORY_LIMIT", bad)
        with pytest.raises(ConfigError, match=r"^OMNIQ_MEMORY_LIMIT=.* is not valid: expected a size"):
            load_config()


# --- the constructor's names work everywhere (issue 22, item 6) ------------------------------
def test_constructor_names_are_accepted_in_dicts_yaml_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config({"tasks": "sqlite:///x.db", "results": "memory", "events": "memory",
                       "worker": "thread"})
    assert (cfg.task_queue_type, cfg.result_storage_type, cfg.event_storage_type,
            cfg.default_worker) == ("sqlite:///x.db", "memory", "memory", "thread")
    cfg = load_config(write(tmp_path, "tasks: sqlite:///x.db\nworker: thread\n"))
    assert (cfg.task_queue_type, cfg.default_worker) == ("sqlite:///x.db", "thread")
    with pytest.raises(ConfigError, match="tasks and task_queue_type both set"):
        load_config({"tasks": "memory", "task_queue_type": "sqlite"})
    with pytest.raises(ConfigError, match="worker='fork' is not valid"):
        load_config({"worker": "fork"})
    monkeypatch.setenv("OMNIQ_TASKS", "sqlite:///env.db")
    monkeypatch.setenv("OMNIQ_WORKER", "async")
    cfg = load_config({"tasks": "memory"})
    assert (cfg.task_queue_type, cfg.default_worker) == ("sqlite:///env.db", "async")  # env beats file
    assert load_config(tasks="memory").task_queue_type == "memory"  # argument beats env
    monkeypatch.setenv("OMNIQ_TASK_QUEUE_TYPE", "memory")
    with pytest.raises(ConfigError, match="OMNIQ_TASK_QUEUE_TYPE and OMNIQ_TASKS both set"):
        read_env()
    monkeypatch.setenv("OMNIQ_TASK_QUEUE_TYPE", "sqlite:///env.db")  # the same value: fine
    assert read_env()["task_queue_type"] == "sqlite:///env.db"


def test_typos_suggest_the_right_key() -> None:
    with pytest.raises(ConfigError, match=r"Did you mean 'tasks' \(config key 'task_queue_type'\)"):
        load_config({"task": "memory"})
    with pytest.raises(ConfigError, match=r"Did you mean 'worker' \(config key 'default_worker'\)"):
        load_config({"workers": "thread"})


def test_unknown_omniq_variables_are_warned_about_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from omniq.config import env as env_module

    monkeypatch.setattr(env_module, "_warned", set())
    monkeypatch.setenv("OMNIQ_CONCURENCY", "3")
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "k" * 32)  # read elsewhere: no warning
    monkeypatch.setenv("OMNIQ_TASKS", "memory")  # an alias: no warning
    with pytest.warns(env_module.UnknownSettingWarning,
                      match="OMNIQ_CONCURENCY is not an OmniQ setting and is ignored. "
                            "Did you mean OMNIQ_CONCURRENCY") as record:
        read_env()
    assert len(record) == 1
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_env()  # once only
