"""LOG_FORMAT=json: one JSON object per line, with the context a call site knows."""

from __future__ import annotations

import io
import json
import logging
import logging.config

import pytest

from core import logs
from core.logs import loggable


def _emit(*, fmt: logs.LogFormat = "json", **kwargs: object) -> list[str]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter() if fmt == "json" else logging.Formatter())
    logger = logging.getLogger("test.logs")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    emit = kwargs.pop("emit")
    assert callable(emit)
    emit(logger)
    return stream.getvalue().splitlines()


def test_a_record_is_one_json_line_with_time_level_logger_and_message() -> None:
    lines = _emit(emit=lambda log: log.warning("two\nlines: %s", "arg"))
    assert len(lines) == 1
    line = json.loads(lines[0])
    assert line["level"] == "warning" and line["logger"] == "test.logs"
    assert line["message"] == "two\nlines: arg"
    assert line["ts"].endswith("Z") and "T" in line["ts"]


def test_the_context_a_call_site_passes_and_the_message_being_processed() -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"

    def emit(log: logging.Logger) -> None:
        with logs.processing("enrich", trace_id):
            log.info("suppressed", extra={"tenant_id": "acme", "notification_id": "n-1"})
        log.info("outside")

    inside, outside = (json.loads(line) for line in _emit(emit=emit))
    assert inside["stage"] == "enrich" and inside["trace_id"] == trace_id
    assert inside["tenant_id"] == "acme" and inside["notification_id"] == "n-1"
    assert "trace_id" not in outside and "stage" not in outside


def test_an_exception_travels_inside_the_line() -> None:
    def emit(log: logging.Logger) -> None:
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")

    (line,) = _emit(emit=emit)
    record = json.loads(line)
    assert "ValueError: boom" in record["exception"] and record["message"] == "failed"


def test_log_format_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    assert logs.log_format() == "text"
    monkeypatch.setenv("LOG_FORMAT", "JSON")
    assert logs.log_format() == "json"
    monkeypatch.setenv("LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="LOG_FORMAT"):
        logs.log_format()


def test_the_dict_config_sets_up_the_root_logger(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        logging.config.dictConfig(logs.dict_config("json", "INFO"))
        logging.getLogger("test.dict").info("hello")
        (line,) = capsys.readouterr().err.splitlines()
        assert json.loads(line)["message"] == "hello"
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (
            b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (None, None),
        ("garbage", None),
    ],
)
def test_trace_id_of(value: str | bytes | None, expected: str | None) -> None:
    assert logs.trace_id_of(value) == expected


# -- loggable: what a log line may say about an error ------------------------------------------

BODY = "Dear Ada, your code is 493817"


def test_a_validation_error_is_logged_without_its_input() -> None:
    import pydantic

    class Message(pydantic.BaseModel):
        subject: str = pydantic.Field(max_length=5)

    with pytest.raises(pydantic.ValidationError) as caught:
        Message(subject=BODY)
    assert BODY in str(caught.value)  # what a plain `%s` used to log
    text = loggable(caught.value)
    assert BODY not in text
    assert text.startswith("ValidationError: subject: String should have at most 5 characters")


def test_a_database_error_is_logged_without_the_rows_it_was_writing() -> None:
    import sqlalchemy as sa

    engine = sa.create_engine("sqlite://")
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE inbox (id TEXT PRIMARY KEY, body TEXT NOT NULL)"))
        conn.execute(sa.text("INSERT INTO inbox VALUES ('n1', :body)"), {"body": BODY})
    with pytest.raises(sa.exc.IntegrityError) as caught, engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO inbox VALUES ('n1', :body)"), {"body": BODY})
    assert BODY in str(caught.value)  # SQLAlchemy appends the parameters
    text = loggable(caught.value)
    assert BODY not in text and "UNIQUE constraint failed: inbox.id" in text


def test_other_errors_are_cut_to_the_limit() -> None:
    text = loggable(RuntimeError("x" * 1000), limit=100)
    assert len(text) == 100 and text.startswith("RuntimeError: xxx") and text.endswith("…")
