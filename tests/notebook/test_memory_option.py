"""``%%omniq submit --memory SIZE``: the cell's task (or every point of its sweep) carries the
limit in bytes; a bad size is a UsageError naming ``--memory``."""

from __future__ import annotations

from typing import Any

import pytest
from IPython.core.error import UsageError

from tests.notebook.test_magics import _Reached, bare_magics  # noqa: F401  (the fixture)


def test_memory_goes_on_the_task(bare_magics: Any) -> None:  # noqa: F811
    with pytest.raises(_Reached) as info:
        bare_magics.omniq("submit -n job --memory 4GB", "y = 1")
    [task] = info.value.seen["tasks"]
    assert task.memory_limit == 4_000_000_000


def test_memory_goes_on_every_point_of_a_sweep(bare_magics: Any) -> None:  # noqa: F811
    with pytest.raises(_Reached) as info:
        bare_magics.omniq("submit -n job --sweep 'a=[1, 2]' --memory '512 MiB'", "y = a")
    assert info.value.seen["options"]["memory_limit"] == 512 * 1024**2


@pytest.mark.parametrize("bad", ["lots", "-1GB", "0", "'4 XB'"])
def test_a_bad_size_names_the_option(bare_magics: Any, bad: str) -> None:  # noqa: F811
    with pytest.raises(UsageError) as info:
        bare_magics.omniq(f"submit -n job --memory {bad}", "y = 1")
    msg = str(info.value)
    assert "--memory" in msg and "Traceback" not in msg
    if not bad.startswith("-"):  # ("-1GB" reads as an option to argparse: "expected one argument")
        assert msg.startswith(f"--memory {bad}: not a size; expected a size such as '4GB'")
