"""Log records name their task, queue and worker; a lost storage is one line, not a flood."""

from __future__ import annotations

import contextvars
import io
import logging
import time

import pytest

from omniq import OmniQ
from omniq.config import configure_logging
from omniq.logs import Outage, about, bind, get_logger
from omniq.storage.base import masked

from . import helpers
from .servers import private_redis


@pytest.fixture
def captured():
    """The "omniq" logger at INFO into a buffer through our own handler; restored after."""
    logger = logging.getLogger("omniq")
    saved_level, saved_handlers = logger.level, list(logger.handlers)
    root_handlers = list(logging.getLogger().handlers)
    logging.getLogger().handlers.clear()  # pytest's capture handler would stand in for ours
    buf = io.StringIO()
    try:
        configure_logging("INFO", stream=buf)
        yield buf
    finally:
        logger.handlers[:] = saved_handlers
        logger.setLevel(saved_level)
        logging.getLogger().handlers[:] = root_handlers


class _Task:
    id = "t-1"
    queue = "images"


def test_every_record_has_the_fields_even_from_a_plain_logger():
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    h = Keep()
    logger = logging.getLogger("omniq.test")
    logger.addHandler(h)
    try:
        get_logger("omniq.test").warning("about a task", extra=about(_Task(), worker="w-9"))
        get_logger("omniq.test").warning("about nothing")
    finally:
        logger.removeHandler(h)
    assert [(r.task_id, r.queue, r.worker) for r in records] == [("t-1", "images", "w-9"), ("-", "-", "-")]


def test_default_format_tags_context_and_a_custom_format_can_name_it(captured):
    contextvars.copy_context().run(_tagged, captured)  # bind() stays inside that context


def _tagged(captured: io.StringIO) -> None:
    bind(worker="w-1")
    get_logger("omniq.x").warning("claim failed", extra=about(_Task()))
    logging.getLogger("omniq.storage.any").warning("from a plain module logger")
    first, second = captured.getvalue().splitlines()[-2:]
    assert first.endswith("claim failed [task=t-1 queue=images worker=w-1]")
    assert second.endswith("from a plain module logger [worker=w-1]")  # filled by our handler
    configure_logging("INFO", fmt="%(worker)s|%(queue)s|%(task_id)s|%(message)s")
    logging.getLogger("omniq.y").warning("plain")
    assert captured.getvalue().splitlines()[-1] == "w-1|-|-|plain"


def test_a_lost_storage_is_reported_once_and_its_return_once(captured):
    with private_redis() as server, OmniQ(tasks=(url := server.url()), worker="thread", concurrency=1) as oq:
        assert oq.submit(helpers.square, 3).result(timeout=30) == 9
        server.stop(crash=True)
        time.sleep(3)  # the worker keeps trying all this while
        server.start()
        assert oq.submit(helpers.square, 4).result(timeout=60) == 16
    text = captured.getvalue()
    warnings = [ln for ln in text.splitlines() if " WARNING " in ln]
    assert any(masked(url) in ln and ("lost" in ln or "failed" in ln) for ln in warnings), text
    assert any(masked(url) in ln and ("again" in ln or "reconnected" in ln) for ln in warnings), text
    assert len(warnings) <= 8, text  # a few lines for a 3 s outage, not one per retry
    assert "Traceback" not in text


def test_outage_logs_the_first_failure_and_the_recovery_only(captured):
    log = get_logger("omniq.worker")
    outage = Outage(log, "claiming tasks", "sqlite:///q.db")
    outage.ok()  # nothing was wrong: nothing to say
    for _ in range(50):
        outage.failed(ConnectionError("refused"))
    outage.ok()
    outage.ok()
    lines = captured.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("claiming tasks on sqlite:///q.db failed (ConnectionError: refused); retrying until it works")
    assert "claiming tasks on sqlite:///q.db works again after" in lines[1] and "(50 failed tries)" in lines[1]


def test_a_record_about_a_task_names_it(tmp_path):
    """A process child dying mid-task: the warning's record carries that task, its queue and
    the worker that ran it."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("omniq")
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.WARNING)
    try:
        with OmniQ(tasks=f"sqlite:///{tmp_path}/d.db", worker="process", concurrency=1, max_deliveries=1) as oq:
            h = oq.enqueue(helpers.die, queue="fragile")
            assert oq.get_result(h, wait=True, timeout=60).status == "failed"
            worker_id = oq.health()["workers"][0]["id"]
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    died = [r for r in records if "died" in r.getMessage()]
    assert died, [r.getMessage() for r in records]
    assert (died[0].task_id, died[0].queue, died[0].worker) == (h, "fragile", worker_id)
