"""Sizes in bytes from what people write: ``"4GB"``, ``"512MB"``, ``"200 MiB"``, ``1_000_000``.

Pure functions, no I/O. Units follow the SI / IEC convention (as Dask, pint and ``du --si``):
``kB``/``KB``/``k``, ``MB``/``M``, ``GB``/``G``, ``TB``/``T``, ``PB``/``P`` are powers of 1000;
``KiB``/``Ki``, ``MiB``/``Mi``, ``GiB``/``Gi``, ``TiB``/``Ti``, ``PiB``/``Pi`` powers of 1024;
``B`` or no unit is bytes. Case does not matter, a space between number and unit is allowed,
and the number may have a fraction (``"1.5GB"``). Used for ``memory_limit``.

Examples:
    >>> from omniq.config.sizes import format_size, parse_size
    >>> parse_size("4GB"), parse_size("200 MiB"), format_size(parse_size("1.5GB"))
    (4000000000, 209715200, '1.5 GB')
"""

from __future__ import annotations

import math
import re
from typing import Any

from ..errors import ConfigError

_UNITS: dict[str, int] = {"": 1, "b": 1}
for _i, _p in enumerate("kmgtp", start=1):
    _UNITS[_p] = _UNITS[f"{_p}b"] = 1000**_i
    _UNITS[f"{_p}i"] = _UNITS[f"{_p}ib"] = 1024**_i

_SIZE = re.compile(r"\s*(?P<num>\d+(?:_\d+)*(?:\.\d*)?|\.\d+)\s*(?P<unit>[a-z]*)\s*", re.IGNORECASE)

#: What a size may be, for error messages ("... is not valid: expected ...").
SIZE_TEXT = (
    "a size such as '4GB', '512MB', '200 MiB' or '1.5G' (kB/MB/GB/TB: powers of 1000, "
    "KiB/MiB/GiB/TiB: powers of 1024), or a whole number of bytes > 0"
)


def parse_size(value: Any, name: str = "memory_limit") -> int | None:
    """``value`` in bytes.

    Args:
        value: None, an int of bytes, or a string such as ``"4GB"`` (see the module docstring).
        name: the argument or key to name in an error.

    Returns:
        The size in bytes (above zero), or None when ``value`` is None.

    Raises:
        ConfigError: anything else, or a size that is not above zero, naming ``name`` and what
            is valid.

    Examples:
        >>> from omniq import ConfigError
        >>> from omniq.config.sizes import parse_size
        >>> parse_size("512MB"), parse_size(1024), parse_size(None)
        (512000000, 1024, None)
        >>> try:
        ...     parse_size("lots", "memory")
        ... except ConfigError as e:
        ...     print(str(e).split(":")[0])
        memory='lots' is not valid
    """
    if value is None:
        return None
    size = size_or_none(value)
    if size is None:
        raise ConfigError(f"{name}={value!r} is not valid: expected {SIZE_TEXT}")
    return size


def size_or_none(value: Any) -> int | None:
    """``value`` in bytes, or None when it is not a valid size.

    For callers with their own error message (an environment variable, a CLI option).

    Args:
        value: an int of bytes, a whole float, or a string such as ``"4GB"``.

    Returns:
        The size in bytes (above zero), or None.

    Examples:
        >>> from omniq.config.sizes import size_or_none
        >>> size_or_none("1.5 GiB"), size_or_none("-1GB"), size_or_none(True)
        (1610612736, None, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value >= 1 and value == int(value) else None
    if not isinstance(value, str):
        return None
    m = _SIZE.fullmatch(value)
    if m is None:
        return None
    factor = _UNITS.get(m["unit"].lower())
    if factor is None:
        return None
    number = m["num"].replace("_", "")
    if "." in number:
        whole, _, frac = number.partition(".")
        # exact arithmetic: "0.1GB" is 100,000,000 bytes, not 100,000,000.00000001
        digits = len(frac)
        size = (int(whole or "0") * 10**digits + int(frac or "0")) * factor // 10**digits
    else:
        size = int(number) * factor
    return size if size > 0 else None


def format_size(n: int) -> str:
    """Bytes for people: ``4 GB``, ``512 MiB``, ``1.5 GB``, ``300 B``.

    The largest unit, decimal or binary, giving a whole number or one decimal; else three
    digits of a decimal unit.

    Args:
        n: bytes.

    Returns:
        The size as text, as error messages show it.

    Examples:
        >>> from omniq.config.sizes import format_size
        >>> format_size(4_000_000_000), format_size(512 * 2**20), format_size(123_456_789)
        ('4 GB', '512 MiB', '123 MB')
    """
    units = list(zip(("kB", "MB", "GB", "TB", "PB"), ("KiB", "MiB", "GiB", "TiB", "PiB")))
    for i in range(len(units), 0, -1):
        dec, bin_ = units[i - 1]
        if n >= 1000**i and (n * 10) % 1000**i == 0:  # whole, or one decimal: "1.5 GB"
            return f"{n / 1000**i:g} {dec}"
        if n >= 1024**i and n % 1024**i == 0:
            return f"{n // 1024**i} {bin_}"
    for i in range(len(units), 0, -1):
        if n >= 1000**i:
            return f"{n / 1000**i:.3g} {units[i - 1][0]}"
    return f"{n} B"


__all__ = ["SIZE_TEXT", "format_size", "parse_size", "size_or_none"]
