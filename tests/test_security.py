"""Issue 21: each proof of concept of the security review, turned into a test that fails safe."""

from __future__ import annotations

import pytest

from omniq.errors import ConfigError
from omniq.serialization import dumps, get_secret_keys, set_secret_keys

KEY = "k" * 40


@pytest.fixture(autouse=True)
def _no_keys(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("OMNIQ_SECRET_KEY", raising=False)
    monkeypatch.delenv("OMNIQ_SECRET_KEYS", raising=False)
    set_secret_keys(None)
    yield
    set_secret_keys(None)


# ------------------------------------------------------------------------------ 1. keys


@pytest.mark.parametrize("value", ["", " ", "\t\n"])
def test_blank_key_is_a_config_error_not_signing_off(monkeypatch, value: str) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", value)
    with pytest.raises(ConfigError, match=r"OMNIQ_SECRET_KEY is empty or blank.*at least 32 bytes"):
        dumps(1)
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        get_secret_keys()


def test_short_key_is_a_config_error_naming_the_rule(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", "s3cret")
    with pytest.raises(
        ConfigError, match=r"OMNIQ_SECRET_KEY is 6 bytes long.*at least 32 bytes"
    ) as ei:
        dumps(1)
    assert "s3cret" not in str(ei.value)  # the key itself is never shown


def test_short_older_key_is_a_config_error(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    monkeypatch.setenv("OMNIQ_SECRET_KEYS", "old")
    with pytest.raises(ConfigError, match="OMNIQ_SECRET_KEYS entry #1 is 3 bytes long"):
        dumps(1)


def test_short_key_passed_in_code_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        set_secret_keys("short")
    with pytest.raises(ConfigError, match="empty or blank"):
        set_secret_keys(["  "])


def test_long_key_signs(monkeypatch) -> None:
    monkeypatch.setenv("OMNIQ_SECRET_KEY", KEY)
    assert dumps(1)[:1] == b"S"
