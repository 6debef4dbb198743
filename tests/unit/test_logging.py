"""The JSON log lines: their fields, the trace ids, and the last-resort card-number mask."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from asgi_correlation_id.context import correlation_id

from app.core import logging as app_logging
from app.core.logging import build_handler, configure_logging
from app.domain.cards import luhn_check_digit, luhn_valid
from tests.conftest import make_settings

REQUIRED_FIELDS = {
    "timestamp",
    "level",
    "logger",
    "message",
    "correlation_id",
    "dd.trace_id",
    "dd.span_id",
    "dd.service",
    "dd.env",
    "dd.version",
}


@pytest.fixture
def emit() -> Iterator[Any]:
    """Log through the app's handler into a buffer; returns the parsed line."""
    buffer = io.StringIO()
    logger = logging.getLogger("tests.unit.logging")
    logger.handlers = [build_handler(make_settings(dd_env="staging", version="1.2.3"), buffer)]
    logger.propagate = False
    logger.setLevel(logging.INFO)

    def _emit(message: str, *args: object, **kwargs: Any) -> dict[str, Any]:
        buffer.seek(0)
        buffer.truncate()
        logger.info(message, *args, **kwargs)
        line: dict[str, Any] = json.loads(buffer.getvalue())
        return line

    yield _emit
    logger.handlers = []


def luhn_number(prefix: str, length: int) -> str:
    partial = prefix + "0" * (length - len(prefix) - 1)
    return partial + luhn_check_digit(partial)


# -- fields ---------------------------------------------------------------------------


def test_every_line_carries_trace_service_env_version_and_correlation_fields(emit: Any) -> None:
    line = emit("hello")
    assert set(line) >= REQUIRED_FIELDS
    assert line["dd.service"] == "payment-service"
    assert line["dd.env"] == "staging"  # DD_ENV wins over APP_ENV for Datadog's env tag
    assert line["dd.version"] == "1.2.3"
    assert line["dd.trace_id"] == "0"  # nothing traced here
    assert line["dd.span_id"] == "0"


def test_dd_env_falls_back_to_the_app_env_profile() -> None:
    assert make_settings().datadog_env == "test"
    assert make_settings(dd_env="production-eu").datadog_env == "production-eu"


def test_the_timestamp_is_iso_8601_in_utc(emit: Any) -> None:
    stamp = datetime.fromisoformat(emit("hello")["timestamp"])
    assert stamp.utcoffset() is not None
    assert stamp.utcoffset().total_seconds() == 0


def test_trace_ids_come_from_the_tracer_s_log_correlation_context(
    emit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Tracer:
        def get_log_correlation_context(self) -> dict[str, str]:
            return {"dd.trace_id": "6b0a76d700000000c94daa6345e6dd7c", "dd.span_id": "42"}

    monkeypatch.setattr(app_logging, "_tracer", Tracer)
    line = emit("inside a span")
    assert line["dd.trace_id"] == "6b0a76d700000000c94daa6345e6dd7c"
    assert line["dd.span_id"] == "42"


def test_trace_ids_that_look_like_card_numbers_are_not_masked(
    emit: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    span_id = luhn_number("1", 19)
    assert luhn_valid(span_id)

    class Tracer:
        def get_log_correlation_context(self) -> dict[str, str]:
            return {"dd.trace_id": span_id, "dd.span_id": span_id}

    monkeypatch.setattr(app_logging, "_tracer", Tracer)
    line = emit("traced")
    assert line["dd.trace_id"] == span_id
    assert line["dd.span_id"] == span_id


# -- the card-number mask -------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "card 4242424242424242 refused",
        "card 4242 4242 4242 4242 refused",
        "card 4242-4242-4242-4242 refused",
        "amex 378282246310005",
        "4000000000009995",
        "json {'card_number': '5555555555554444'}",
    ],
)
def test_luhn_valid_card_numbers_standing_alone_are_masked(emit: Any, text: str) -> None:
    message = emit(text)["message"]
    assert "[REDACTED]" in message
    assert not any(run in message for run in ("4242424242", "3782822463", "5555555555"))


@pytest.mark.parametrize(
    "text",
    [
        # digit runs inside hex ids: adjacent to letters on either side
        "payment txn_ad4242424242424242c69e captured",
        "refund re_0f4242424242424242 done",
        "id 4242424242424242abcdef",
        # Luhn-invalid runs of card length: order numbers, timestamps
        "order 4242424242424241 shipped",
        "epoch ms 1764312147123",
    ],
)
def test_ids_and_luhn_invalid_runs_are_left_alone(emit: Any, text: str) -> None:
    digits = "".join(c for c in text.split()[1] if c.isdigit())
    if len(digits) in range(12, 20) and not any(c.isalpha() for c in text.split()[1]):
        assert not luhn_valid(digits)
    assert emit(text)["message"] == text


def test_a_real_transaction_id_survives_intact(emit: Any) -> None:
    # A transaction id whose hex happens to hold a Luhn-valid 16-digit run.
    run = luhn_number("4", 16)
    txn = f"txn_ab{run}cdef0123456789"
    assert emit("payment %s captured", txn)["message"] == f"payment {txn} captured"


def test_card_numbers_in_extra_fields_and_exceptions_are_masked(emit: Any) -> None:
    line = emit("with extra", extra={"note": "card 4111 1111 1111 1111"})
    assert line["note"] == "card [REDACTED]"

    buffer = io.StringIO()
    logger = logging.getLogger("tests.unit.logging.exc")
    logger.handlers = [build_handler(make_settings(), buffer)]
    logger.propagate = False
    try:
        raise ValueError("bad card 4111111111111111")
    except ValueError:
        logger.exception("failed")
    logger.handlers = []
    record = json.loads(buffer.getvalue())
    assert "4111111111111111" not in json.dumps(record)
    assert "[REDACTED]" in record["exc_info"]


# -- library loggers ------------------------------------------------------------------


def test_aiokafka_reconnection_errors_are_silenced_but_not_critical_ones() -> None:
    configure_logging(make_settings())
    for name in ("aiokafka", "aiokafka.conn", "aiokafka.producer.sender"):
        assert logging.getLogger(name).getEffectiveLevel() == logging.CRITICAL
    assert not logging.getLogger("aiokafka.conn").isEnabledFor(logging.ERROR)
    assert logging.getLogger("app").isEnabledFor(logging.INFO)


# -- writing off the event loop ------------------------------------------------------------


class _SlowStdout(io.StringIO):
    """A stdout whose reader is stuck until released (a full pipe)."""

    def __init__(self) -> None:
        super().__init__()
        self.released = threading.Event()
        self.writers: set[str] = set()

    def write(self, text: str) -> int:
        self.writers.add(threading.current_thread().name)
        self.released.wait(timeout=10)
        return super().write(text)


def test_a_stuck_stdout_does_not_block_the_code_that_logs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stdout = _SlowStdout()
    monkeypatch.setattr(sys, "stdout", stdout)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure_logging(make_settings())
        token = correlation_id.set("corr-slow-pipe")
        try:
            for n in range(50):
                logging.getLogger("app.test").warning("line %d while stdout is stuck", n)
        finally:
            correlation_id.reset(token)
        # Every call returned while not one line could be written: nobody waited for the pipe.
        assert stdout.getvalue() == ""
        stdout.released.set()
        app_logging.stop_log_writer()  # what the process does at exit: write out the queue
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    lines = [json.loads(line) for line in stdout.getvalue().splitlines()]
    assert [line["message"] for line in lines] == [
        f"line {n} while stdout is stuck" for n in range(50)
    ]
    assert {line["correlation_id"] for line in lines} == {"corr-slow-pipe"}
    assert threading.current_thread().name not in stdout.writers


class _BrokenOnce(io.StringIO):
    """A stdout whose first write fails (a broken pipe), later ones succeed."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def write(self, text: str) -> int:
        if not self.failed:
            self.failed = True
            raise BrokenPipeError("the reader went away")
        return super().write(text)


def test_the_log_writer_survives_a_write_that_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    stdout = _BrokenOnce()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(logging, "raiseExceptions", False)  # no traceback on stderr
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        configure_logging(make_settings())
        logging.getLogger("app.test").warning("lost with the broken write")
        logging.getLogger("app.test").warning("written by the same thread afterwards")
        app_logging.stop_log_writer()
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    assert stdout.failed
    messages = [json.loads(line)["message"] for line in stdout.getvalue().splitlines()]
    assert messages == ["written by the same thread afterwards"]
