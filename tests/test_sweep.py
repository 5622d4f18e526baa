"""Parameter sweeps: grids, spec parsing, point keys, resuming, records, the async twin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from omniq import AsyncOmniQ, OmniQ, TaskError
from omniq.errors import ConfigError
from omniq.sweep import (
    AsyncSweep,
    Sweep,
    Zipped,
    expand_grid,
    function_identity,
    params_digest,
    parse_sweep_spec,
    point_key,
    zipped,
)
from tests.helpers import examples

ROOT = Path(__file__).resolve().parents[1]


# --- task functions (module level: importable by reference in worker processes) -------------
def train(lr, seed):
    return {"score": round(lr * 100 + seed, 6)}


def fails_on_two(lr, seed):
    if seed == 2:
        raise ValueError(f"seed {seed} diverged")
    return lr * seed


def nap(seconds, i):
    time.sleep(seconds)
    return i


def echo(**params):
    return params


def make_flaky(marker: str):
    """Fails for odd ``i`` while ``marker`` exists (a closure: travels by value with dill)."""

    def flaky(i):
        if i % 2 and os.path.exists(marker):
            raise RuntimeError(f"point {i} failed")
        return i * 10

    return flaky


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path}/sweep.db"


# ============================================================================================
# grids
# ============================================================================================
def test_dict_grid_is_a_product_in_key_order_last_key_fastest():
    pts = expand_grid({"lr": [0.1, 0.01], "seed": range(3)})
    assert pts == [
        {"lr": 0.1, "seed": 0}, {"lr": 0.1, "seed": 1}, {"lr": 0.1, "seed": 2},
        {"lr": 0.01, "seed": 0}, {"lr": 0.01, "seed": 1}, {"lr": 0.01, "seed": 2},
    ]


def test_scalars_strings_and_mappings_are_fixed_values():
    pts = expand_grid({"model": "resnet", "cfg": {"depth": 2}, "n": 5, "seed": [0, 1]})
    assert pts == [
        {"model": "resnet", "cfg": {"depth": 2}, "n": 5, "seed": 0},
        {"model": "resnet", "cfg": {"depth": 2}, "n": 5, "seed": 1},
    ]


def test_sets_expand_sorted_so_order_is_stable():
    assert [p["x"] for p in expand_grid({"x": {"b", "c", "a"}})] == ["a", "b", "c"]


def test_zipped_axes_advance_together_alone_and_inside_a_dict():
    z = zipped(lr=[0.1, 0.01], momentum=[0.9, 0.99])
    assert isinstance(z, Zipped) and len(z) == 2
    assert expand_grid(z) == [{"lr": 0.1, "momentum": 0.9}, {"lr": 0.01, "momentum": 0.99}]
    pts = expand_grid({"opt": z, "seed": [0, 1]})
    assert pts == [
        {"lr": 0.1, "momentum": 0.9, "seed": 0}, {"lr": 0.1, "momentum": 0.9, "seed": 1},
        {"lr": 0.01, "momentum": 0.99, "seed": 0}, {"lr": 0.01, "momentum": 0.99, "seed": 1},
    ]


def test_list_of_dicts_is_taken_as_given():
    grid = [{"a": 2}, {"a": 1, "b": "x"}]
    assert expand_grid(grid) == grid
    assert expand_grid(iter(grid)) == grid


@pytest.mark.parametrize(
    ("grid", "needle"),
    [
        ({}, "grid={} is empty"),
        ([], "grid is empty"),
        ({"lr": []}, "grid['lr'] is empty"),
        ({1: [1, 2]}, "parameter names must be strings"),
        ([{"a": 1}, 3], "grid[1]=3 is not valid"),
        ("lr=[1, 2]", "parse_sweep_spec"),
        (42, "grid=42 is not valid"),
        ({"pair": zipped(a=[1], b=[2]), "a": [3]}, "parameter(s) a more than once"),
    ],
)
def test_bad_grids_name_what_is_wrong(grid, needle):
    with pytest.raises(ConfigError, match=None) as ei:
        expand_grid(grid)
    assert needle in str(ei.value)


def test_zipped_rejects_unequal_lengths_and_scalars():
    with pytest.raises(ConfigError, match="different lengths"):
        zipped(a=[1, 2], b=[1])
    with pytest.raises(ConfigError, match="expected a list"):
        zipped(a="abc")
    with pytest.raises(ConfigError, match="at least one axis"):
        zipped()


# ============================================================================================
# parse_sweep_spec
# ============================================================================================
@pytest.mark.parametrize(
    "spec",
    [
        "lr=[1e-3, 1e-2]; seed=range(3)",
        '"lr=[1e-3, 1e-2]; seed=range(3)"',  # magic_arguments keeps the quotes
        "'lr=[1e-3, 1e-2]; seed=range(3)'",
        "  lr = [0.001, 0.01] ;seed=range(0, 3, 1)  ",
        "lr=[1e-3, 1e-2], seed=range(3)",  # comma separated
        "lr=[1e-3, 1e-2]\nseed=[0, 1, 2]",  # one per line
        "lr=[1/1000, 10**-2]; seed=range(1+2)",  # arithmetic
    ],
)
def test_parse_sweep_spec_forms(spec):
    assert parse_sweep_spec(spec) == {"lr": [0.001, 0.01], "seed": [0, 1, 2]}


def test_parse_sweep_spec_values():
    got = parse_sweep_spec(
        "a=0.5; b=(1, 2); c='x;y'; d=[-1, +2]; e={'k': [1]}; f=[None, True]; g=[1]*3; h=1+2j"
    )
    assert got == {
        "a": [0.5], "b": [1, 2], "c": ["x;y"], "d": [-1, 2], "e": [{"k": [1]}],
        "f": [None, True], "g": [1, 1, 1], "h": [1 + 2j],
    }


def test_parse_sweep_spec_zipped_targets_and_names():
    got = parse_sweep_spec("lr, m = zip([0.1, 0.01], [0.9, 0.99]); seed=seeds", {"seeds": [7, 8]})
    assert got == {"lr,m": zipped(lr=[0.1, 0.01], m=[0.9, 0.99]), "seed": [7, 8]}
    assert expand_grid(got)[:2] == [{"lr": 0.1, "m": 0.9, "seed": 7}, {"lr": 0.1, "m": 0.9, "seed": 8}]


@pytest.mark.parametrize(
    ("spec", "part", "why"),
    [
        ("lr=[1e-3, 1e-2]; seed=rang(3)", "seed=rang(3)", "only range(...) and zip(...)"),
        ("lr=[1, 2; seed=range(3)", "lr=[1, 2", "invalid syntax"),
        ("lr=[1]; seed=x", "seed=x", "no namespace was given"),
        ("lr=[1]; seed=__import__('os')", "seed=__import__('os')", "only range"),
        ("lr=().__class__", "lr=().__class__", "Attribute expressions are not allowed"),
        ("lr=[1]; lr=[2]", "lr=[2]", "given more than once"),
        ("lr=1/0", "lr=1/0", "ZeroDivisionError"),
        ("lr=range(10**9)", "lr=range(10**9)", "at most 1000000"),
        ("lr=9**9**9", "lr=9**9**9", "too large"),
        ("a, b = [1, 2]", "a, b = [1, 2]", "does not have 2 values"),
        ("a=b=[1]", "a=b=[1]", "single 'name=values'"),
        ("print('hi')", "print('hi')", "single 'name=values'"),
        ("a.b=[1]", "a.b=[1]", "left side must be a name"),
    ],
)
def test_bad_specs_name_the_part_and_what_is_valid(spec, part, why):
    with pytest.raises(ConfigError) as ei:
        parse_sweep_spec(spec)
    msg = str(ei.value)
    assert f"part {part!r}" in msg and why in msg


@pytest.mark.parametrize("spec", ["", "  ", '""', "''"])
def test_empty_spec(spec):
    with pytest.raises(ConfigError, match="empty"):
        parse_sweep_spec(spec)


def test_spec_names_from_a_namespace_only_when_defined():
    with pytest.raises(ConfigError, match="name 'nope' is not defined"):
        parse_sweep_spec("a=nope", {"other": 1})


_SPECISH = st.text(alphabet="abxyz=[](){};,:0123456789.+-*/%'\" \n_rangezip", max_size=40)


@settings(max_examples=examples(400), deadline=None)
@given(st.one_of(st.text(max_size=60), _SPECISH))
def test_any_string_gives_a_dict_or_config_error(text):
    try:
        got = parse_sweep_spec(text)
    except ConfigError:
        return
    assert isinstance(got, dict) and got
    for key, axis in got.items():
        assert isinstance(key, str)
        assert isinstance(axis, (list, Zipped))


@settings(max_examples=examples(100), deadline=None)
@given(
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9_]{0,6}", fullmatch=True).filter(
            lambda s: s not in {"if", "in", "is", "or", "as", "def", "del", "for", "and", "not", "try"}
        ),
        st.lists(st.one_of(st.integers(-10**6, 10**6), st.text("abc", max_size=3)), min_size=1, max_size=5),
        min_size=1, max_size=4,
    )
)
def test_generated_specs_round_trip(grid):
    spec = "; ".join(f"{k}={v!r}" for k, v in grid.items())
    assert parse_sweep_spec(f'"{spec}"') == grid


# ============================================================================================
# keys
# ============================================================================================
def test_params_digest_is_order_free_and_type_aware():
    assert params_digest({"a": 1, "b": 2}) == params_digest({"b": 2, "a": 1})
    assert params_digest({"a": 1}) != params_digest({"a": 1.0}) != params_digest({"a": True})
    assert params_digest({"a": [1, 2]}) != params_digest({"a": (1, 2)})
    assert params_digest({"a": 2**80}) != params_digest({"a": 2**80 + 1})
    assert params_digest({"a": {"x": 1, "y": 2}}) == params_digest({"a": {"y": 2, "x": 1}})
    assert params_digest({"a": {"s", "t"}}) == params_digest({"a": {"t", "s"}})


def test_params_digest_golden_values():
    # Keys are how sweeps resume: a change here reruns every stored sweep. Change on purpose only.
    assert params_digest({"lr": 0.001, "seed": 2}) == "0229f22b959f6d3c"
    assert params_digest({"model": "resnet", "layers": [1, 2]}) == "3c0f4fc369d336d2"


def test_point_key_shape_lists_under_the_sweep_name():
    key = point_key("exp1", function_identity(train), {"lr": 0.1, "seed": 0})
    name, ident, params = key.split("/")
    assert name == "exp1" and len(ident) == 16 and len(params) == 16
    assert function_identity(train).startswith("tests.test_sweep.train@")


def _identity_in_subprocess(code: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "random"},
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _closure_with_unordered_values():
    tags = {"alpha", "beta", "gamma", "delta"}
    table = {"x": 1, "y": [1, 2]}

    def fn(i):
        return len(tags) + table["x"] + i

    return fn


def test_keys_are_stable_across_processes():
    here = {
        "train": function_identity(train),
        "closure": function_identity(_closure_with_unordered_values()),
        "key": point_key("exp", function_identity(train), {"lr": 0.1, "seed": 3, "tags": {"a", "b", "c"}}),
    }
    there = _identity_in_subprocess(
        """
        import json
        from omniq.sweep import function_identity, point_key
        from tests.test_sweep import train, _closure_with_unordered_values
        print(json.dumps({
            "train": function_identity(train),
            "closure": function_identity(_closure_with_unordered_values()),
            "key": point_key("exp", function_identity(train), {"lr": 0.1, "seed": 3, "tags": {"a", "b", "c"}}),
        }))
        """
    )
    assert there == here


def _compile(source: str, name: str = "f", module: str = "__main__", **globals_):
    ns = {"__name__": module, **globals_}
    exec(compile(textwrap.dedent(source), "<cell>", "exec"), ns)
    return ns[name], ns


def test_identity_changes_with_code_but_not_with_line_numbers_or_file():
    a, _ = _compile("def f(x):\n    return x + 1\n")
    b, _ = _compile("\n\n\n# a comment\ndef f(x):\n    return x + 1\n")
    c, _ = _compile("def f(x):\n    return x + 2\n")
    assert function_identity(a) == function_identity(b)
    assert function_identity(a) != function_identity(c)


def test_identity_covers_nested_code_defaults_and_closure_values():
    n1, _ = _compile("def f(x):\n    def g(y):\n        return y * 2\n    return g(x)\n")
    n2, _ = _compile("def f(x):\n    def g(y):\n        return y * 3\n    return g(x)\n")
    assert function_identity(n1) != function_identity(n2)
    d1, _ = _compile("def f(x, k=1):\n    return x + k\n")
    d2, _ = _compile("def f(x, k=2):\n    return x + k\n")
    assert function_identity(d1) != function_identity(d2)

    def make(k, data):
        def f(x):
            return x + k + len(data)

        return f

    assert function_identity(make(1, [1, 2])) == function_identity(make(1, [1, 2]))
    assert function_identity(make(1, [1, 2])) != function_identity(make(2, [1, 2]))
    assert function_identity(make(1, [1, 2])) != function_identity(make(1, [1, 3]))


def test_identity_follows_main_helpers_it_calls():
    helper1, _ = _compile("def helper(x):\n    return x + 1\n", "helper")
    helper2, _ = _compile("def helper(x):\n    return x + 2\n", "helper")
    f1, _ = _compile("def f(x):\n    return helper(x)\n", helper=helper1)
    f2, _ = _compile("def f(x):\n    return helper(x)\n", helper=helper2)
    assert function_identity(f1) != function_identity(f2)


def test_identity_of_recursive_and_odd_callables():
    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    assert function_identity(fact) == function_identity(fact)  # the cycle through its closure ends
    from functools import partial

    assert function_identity(partial(train, 1)) != function_identity(partial(train, 2))
    assert function_identity(len).startswith("len@")


# ============================================================================================
# running sweeps
# ============================================================================================
def test_results_and_failed_records_in_grid_order(db):
    with OmniQ(tasks=db, worker="process", concurrency=2) as oq:
        sw = oq.sweep(fails_on_two, {"lr": [0.5, 0.25], "seed": range(3)}, name="exp")
        assert isinstance(sw, Sweep) and len(sw) == 6 and sw.name == "exp"
        assert sw.wait(timeout=60) is sw and sw.done()
        recs = sw.results()
        assert [(r["lr"], r["seed"]) for r in recs] == [(p["lr"], p["seed"]) for p in sw.points]
        assert [r["status"] for r in recs] == ["succeeded", "succeeded", "failed"] * 2
        assert [r["value"] for r in recs] == [0.0, 0.5, None, 0.0, 0.25, None]
        assert all(r["duration"] is not None and r["duration"] >= 0 for r in recs)
        assert recs[2]["error"] == "ValueError: seed 2 diverged" and recs[0]["error"] is None
        failed = sw.failed()
        assert [(r["lr"], r["seed"]) for r in failed] == [(0.5, 2), (0.25, 2)]
        assert "in fails_on_two" in failed[0]["traceback"]
        assert sw.counts() == {"succeeded": 4, "failed": 2}
        assert "4 succeeded" in repr(sw) and "2 failed" in repr(sw)
        with pytest.raises(TaskError, match="2 of 6 points") as ei:
            sw.values()
        assert ei.value.type == "ValueError"
        assert sw.values(default=None) == [0.0, 0.5, None, 0.0, 0.25, None]
        # the sweep's points are listed under its name
        keys = {r.key for r in oq.find_results("exp/")}
        assert keys == set(sw.keys) and len(keys) == 6


def test_unfinished_points_read_as_queued_or_running(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        sw = oq.sweep(nap, {"seconds": [0.3], "i": range(4)})
        assert sw.name == "nap"
        recs = sw.results()
        assert {r["status"] for r in recs} <= {"queued", "running", "pending", "succeeded"}
        assert all(r["value"] is None for r in recs if r["status"] != "succeeded")
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.05 s"):
            sw.wait(timeout=0.05)
        with pytest.raises(TaskError, match="not finished"):
            sw.values()
        deadline = time.monotonic() + 5
        while sw.counts().get("running") != 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sw.counts().get("running") == 1  # from in-process "started" events
        assert sw.wait(30).values() == [0, 1, 2, 3]


def test_resume_skips_finished_points_with_a_second_instance(tmp_path, db):
    marker = tmp_path / "fail-odd"
    marker.touch()
    grid = {"i": range(6)}
    with OmniQ(tasks=db, worker="process", concurrency=2) as oq:
        first = oq.sweep(make_flaky(str(marker)), grid, name="resume").wait(60)
        assert first.submitted == 6
        assert first.counts() == {"succeeded": 3, "failed": 3}
    marker.unlink()
    with OmniQ(tasks=db, worker="process", concurrency=2) as oq:
        second = oq.sweep(make_flaky(str(marker)), grid, name="resume")
        assert second.submitted == 3  # only the failed ones ran again
        assert second.keys == first.keys
        assert second.wait(60).values() == [0, 10, 20, 30, 40, 50]
        assert len(oq.find_results("resume/")) == 9  # 6 first results + 3 reruns
        third = oq.sweep(make_flaky(str(marker)), grid, name="resume")
        assert third.submitted == 0 and third.done()
        assert [r["status"] for r in third.results()] == ["succeeded"] * 6
        # a different function under the same name is a different sweep
        other = oq.sweep(make_flaky(str(marker) + "-other"), grid, name="resume")
        assert other.submitted == 6
        other.wait(60)


def test_resume_in_a_fresh_process(tmp_path, db):
    grid = {"lr": [0.1, 0.2], "seed": range(3)}
    with OmniQ(tasks=db, worker="process", concurrency=2) as oq:
        sw = oq.sweep(fails_on_two, grid, name="fresh").wait(60)
        assert sw.counts() == {"succeeded": 4, "failed": 2}
    script = f"""
        import json
        from omniq import OmniQ
        from tests.test_sweep import fails_on_two
        with OmniQ(tasks={db!r}, worker="thread", concurrency=2) as oq:
            sw = oq.sweep(fails_on_two, {grid!r}, name="fresh")
            submitted = sw.submitted
            sw.wait(60)
            print(json.dumps({{"submitted": submitted, "counts": sw.counts(),
                              "values": sw.values(default=None)}}))
    """
    got = _identity_in_subprocess(script)
    assert got["submitted"] == 2  # the two failed points, nothing else
    assert got["counts"] == {"succeeded": 4, "failed": 2}
    assert got["values"] == [0.0, 0.1, None, 0.0, 0.2, None]


def test_retry_failed_resubmits_in_place(tmp_path, db):
    marker = tmp_path / "fail-odd"
    marker.touch()
    with OmniQ(tasks=db, worker="process", concurrency=2) as oq:
        sw = oq.sweep(make_flaky(str(marker)), {"i": range(5)}, name="retry").wait(60)
        assert [r["i"] for r in sw.failed()] == [1, 3]
        assert sw.retry_failed() is sw  # nothing changed yet: they fail again
        sw.wait(60)
        assert sw.submitted == 7 and [r["i"] for r in sw.failed()] == [1, 3]
        marker.unlink()
        assert sw.retry_failed().wait(60).values() == [0, 10, 20, 30, 40]
        assert sw.submitted == 9 and sw.failed() == []
        assert sw.retry_failed().submitted == 9  # nothing left to retry


def test_cancel_and_inflight_points_are_followed_not_resubmitted(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        grid = {"seconds": [0.2], "i": range(6)}
        sw = oq.sweep(nap, grid, name="slow")
        again = oq.sweep(nap, grid, name="slow")  # a re-run cell while it is going
        assert again.submitted == 0
        time.sleep(0.3)
        n = sw.cancel()
        assert n >= 3
        sw.wait(30)
        again.wait(30)
        counts = sw.counts()
        assert counts.get("cancelled", 0) == n and sum(counts.values()) == 6
        assert again.counts() == counts
        assert {r["status"] for r in sw.failed()} == {"cancelled"}
        assert sw.failed()[0]["error"].startswith("TaskCancelled")
        assert sw.cancel() == 0


def test_to_pandas(db):
    pd = pytest.importorskip("pandas")
    with OmniQ(tasks=db, worker="thread", concurrency=2) as oq:
        df = oq.sweep(train, {"lr": [0.1, 0.2], "seed": range(2)}).wait(30).to_pandas()
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["lr", "seed", "value", "status", "error", "duration"]
    assert df["seed"].tolist() == [0, 1, 0, 1]
    assert df["value"].tolist()[1] == {"score": 11.0}


def test_parameters_named_like_result_fields_and_odd_values(db):
    class Model:
        def __init__(self, depth):
            self.depth = depth

        def __repr__(self):
            return f"Model({self.depth})"

    with OmniQ(tasks=db, worker="thread", concurrency=2) as oq:
        sw = oq.sweep(echo, {"value": [1, 2], "model": [Model(3)]}, name="odd").wait(30)
        recs = sw.results()
        assert recs[0]["param_value"] == 1 and recs[0]["value"]["value"] == 1
        assert recs[1]["model"].depth == 3
        stored = oq.find_results("odd/")
        assert {r.metadata["params"]["model"] for r in stored} == {"Model(3)"}
        assert {r.metadata["sweep"] for r in stored} == {"odd"}


def test_sweep_options_and_their_errors(db):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        with pytest.raises(ConfigError, match="key= cannot be given"):
            oq.sweep(train, {"lr": [1]}, key="x")
        with pytest.raises(ConfigError, match="name=''"):
            oq.sweep(train, {"lr": [1]}, name="")
        with pytest.raises(ConfigError, match="fn=3"):
            oq.sweep(3, {"lr": [1]})
        with pytest.raises(ConfigError, match="queue"):
            oq.sweep(train, {"lr": [1], "seed": [0]}, queue="")
        sw = oq.sweep(train, {"lr": [1], "seed": [0]}, name="opts", priority=5, retries=1)
        assert sw.wait(30).values() == [{"score": 100.0}]
        sw2 = oq.sweep(train, {"lr": [1], "seed": [0]}, name="opts", identity="cell:abc")
        assert sw2.submitted == 1 and sw2.identity == "cell:abc"  # another identity, another key
        sw2.wait(30)


def test_start_of_a_10k_point_sweep_is_fast(db):
    grid = {"lr": [i * 1e-4 for i in range(100)], "seed": range(100)}
    with OmniQ(tasks=db, concurrency=0) as oq:
        oq.find_results("warm/")
        t0 = time.perf_counter()
        sw = oq.sweep(train, grid, name="big")
        elapsed = time.perf_counter() - t0
        assert len(sw) == 10_000 and sw.submitted == 10_000
        print(f"\nSweep.start of 10,000 points: {elapsed * 1000:.0f} ms (incl. build_tasks + submit_tasks)")
        oq.flush()
        t0 = time.perf_counter()
        again = oq.sweep(train, grid, name="big")  # all in flight here: nothing submitted
        print(f"Sweep.start again, following 10,000 in-flight points: {(time.perf_counter() - t0) * 1000:.0f} ms")
        assert again.submitted == 0
    assert elapsed < 5.0  # generous: shared CI machines; the report has the profile split


# ============================================================================================
# the async twin
# ============================================================================================
@pytest.mark.anyio
async def test_async_sweep(tmp_path):
    url = f"sqlite:///{tmp_path}/a.db"
    async with AsyncOmniQ(tasks=url, worker="thread", concurrency=2) as oq:
        sw = await oq.sweep(fails_on_two, {"lr": [1.0], "seed": range(4)}, name="aexp")
        assert isinstance(sw, AsyncSweep)
        assert await sw.wait(timeout=30) is sw
        assert [r["status"] for r in sw.results()] == ["succeeded", "succeeded", "failed", "succeeded"]
        assert [r["seed"] for r in sw.failed()] == [2]
        assert sw.values(default=None) == [0.0, 1.0, None, 3.0]
        again = await oq.sweep(fails_on_two, {"lr": [1.0], "seed": range(4)}, name="aexp")
        assert again.submitted == 1
        await again.wait(30)
        assert await (await again.retry_failed()).wait(30) is again
        assert again.submitted == 2
        slow = await oq.sweep(nap, {"seconds": [0.5], "i": range(6)}, name="anap")
        with pytest.raises(TimeoutError):
            await slow.wait(timeout=0.05)
        assert await slow.cancel() >= 3
        await slow.wait(30)
        assert slow.counts().get("cancelled", 0) >= 3


def test_spec_names_expand_like_dict_grid_values():
    ns = {"seeds": range(3), "tags": {"b", "a"}, "name": "resnet", "none": []}
    assert parse_sweep_spec("seed=seeds; tag=tags; model=name", ns) == {
        "seed": [0, 1, 2], "tag": ["a", "b"], "model": ["resnet"],
    }
    with pytest.raises(ConfigError, match="x has no values"):
        parse_sweep_spec("x=none", ns)


def test_to_pandas_without_pandas_says_how_to_install(db, monkeypatch):
    with OmniQ(tasks=db, worker="thread", concurrency=1) as oq:
        sw = Sweep.start(oq, train, {"lr": [1], "seed": [0]}, name="nopd").wait(30)
        monkeypatch.setitem(sys.modules, "pandas", None)  # what `import pandas` sees when it is missing
        with pytest.raises(ImportError, match="pip install pandas"):
            sw.to_pandas()
