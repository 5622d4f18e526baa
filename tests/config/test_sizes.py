"""Sizes for ``memory_limit``: "4GB", "512MB", "200 MiB", bytes; bad input names the option."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniq.config.sizes import format_size, parse_size, size_or_none
from omniq.errors import ConfigError
from tests.helpers import examples


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("4GB", 4_000_000_000),
        ("4gb", 4_000_000_000),
        ("4G", 4_000_000_000),
        ("512MB", 512_000_000),
        ("512 MB", 512_000_000),
        ("200 MiB", 200 * 1024**2),
        ("200mib", 200 * 1024**2),
        ("1.5GB", 1_500_000_000),
        ("0.1GB", 100_000_000),
        (".5 KiB", 512),
        ("3Ki", 3072),
        ("1TB", 10**12),
        ("2 TiB", 2 * 1024**4),
        ("1PB", 10**15),
        ("100kB", 100_000),
        ("100 k", 100_000),
        ("1024", 1024),
        ("1024B", 1024),
        (" 7 b ", 7),
        ("1_000_000", 1_000_000),
        (4096, 4096),
        (2.0**30, 2**30),
    ],
)
def test_sizes_people_write(text: Any, size: int) -> None:
    assert parse_size(text) == size
    assert size_or_none(text) == size


def test_none_stays_none() -> None:
    assert parse_size(None) is None


@pytest.mark.parametrize(
    "bad",
    ["", "GB", "4 XB", "4GBs", "-1GB", "0", "0MB", "0.0001B", "four GB", "4,5GB", "1e9", "inf",
     "nan", 0, -5, True, 1.5, float("nan"), float("inf"), [4], b"4GB", "4 G B"],
)
def test_bad_sizes_name_memory_limit_and_what_is_valid(bad: Any) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(bad)
    msg = str(info.value)
    assert msg.startswith(f"memory_limit={bad!r} is not valid: expected a size such as '4GB'")
    assert "MiB" in msg and "bytes" in msg
    assert size_or_none(bad) is None


def test_the_error_names_the_option_given() -> None:
    with pytest.raises(ConfigError, match=r"^--memory='x' is not valid"):
        parse_size("x", "--memory")


@pytest.mark.parametrize(
    ("n", "text"),
    [(4 * 1024**3, "4 GiB"), (512 * 1024**2, "512 MiB"), (4_000_000_000, "4 GB"), (1_500_000_000, "1.5 GB"),
     (300, "300 B"), (2048, "2 KiB"), (100_000, "100 kB")],
)
def test_format_size(n: int, text: str) -> None:
    assert format_size(n) == text
    assert parse_size(text.replace(" ", "")) == n


@given(st.text(max_size=12) | st.integers() | st.floats())
@settings(max_examples=examples(300), deadline=None)
def test_anything_is_a_positive_size_or_a_config_error(value: Any) -> None:
    try:
        size = parse_size(value)
    except ConfigError as exc:
        assert "memory_limit=" in str(exc)
        return
    assert isinstance(size, int) and size > 0
