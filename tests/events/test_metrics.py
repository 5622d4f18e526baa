"""Counters, timings and the Prometheus text of one process."""

from __future__ import annotations

import math
import re

from omniq.events.metrics import BUCKETS, Metrics, Timing
from omniq.models import TaskEvent


def _ev(kind: str, queue: str | None = "q", task: str = "t") -> TaskEvent:
    return TaskEvent(task_id=task, type=kind, timestamp=0.0, queue=queue)


def test_timing_keeps_exact_totals_and_recent_percentiles():
    t = Timing(recent=100)
    for i in range(1, 201):  # 1..200 ms; only the last 100 feed the percentiles
        t.observe(i / 1000)
    s = t.summary()
    assert s["count"] == 200
    assert math.isclose(s["sum"], sum(range(1, 201)) / 1000)
    assert s["max"] == 0.2
    assert s["p50"] == 0.151 and s["p99"] == 0.2
    assert sum(t.buckets) == 200
    t.observe(-1.0)  # a clock step backwards counts as zero, not a negative duration
    assert t.summary()["count"] == 201 and t.buckets[0] == 1 + sum(1 for i in range(1, 201) if i / 1000 <= 0.001)


def test_empty_timing_has_no_made_up_numbers():
    assert Timing().summary() == {"count": 0, "sum": 0.0, "mean": None, "max": None,
                                  "p50": None, "p95": None, "p99": None}


def test_counters_by_type_and_queue():
    m = Metrics()
    m.on_events([_ev("enqueued"), _ev("enqueued", "other"), _ev("started"), _ev("retry"), _ev("failed", None)])
    snap = m.snapshot()
    assert snap["counters"]["enqueued"] == 2 and snap["counters"]["retry"] == 1
    assert snap["counters"]["succeeded"] == 0  # every type is reported, seen or not
    assert snap["by_queue"] == {"q": {"enqueued": 1, "retry": 1, "started": 1}, "other": {"enqueued": 1},
                                "default": {"failed": 1}}


_VALUE = r'"(?:[^"\\]|\\.)*"'  # a quoted label value with \\, \" and \n escapes
_LINE = re.compile(rf"^[a-z_]+(\{{[a-z_]+={_VALUE}(,[a-z_]+={_VALUE})*\}})? [0-9.e+-]+$")


def test_prometheus_text_is_well_formed_and_cumulative():
    m = Metrics()
    m.on_events([_ev("succeeded", 'we"ird\\q')] * 3)
    for v in (0.0005, 0.02, 7.0, 1000.0):
        m.run.observe(v)
    text = m.prometheus({"omniq_worker_slots": ("Slots.", 4.0)})
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or _LINE.match(line), line
    assert 'omniq_events_total{type="succeeded",queue="we\\"ird\\\\q"} 3' in text
    buckets = [int(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("omniq_run_seconds_bucket")]
    assert len(buckets) == len(BUCKETS) and buckets == sorted(buckets)  # cumulative
    assert buckets[0] == 1 and buckets[-1] == 4  # +Inf holds the 1000 s run
    assert "omniq_run_seconds_count 4" in text and "omniq_worker_slots 4.0" in text
