"""Log output for every process: human-readable by default, one JSON object per line with
LOG_FORMAT=json (for Loki, Elasticsearch, CloudWatch...).

A JSON line carries the time, level, logger and message, the exception when there is one, and
the context the call site knows: `tenant_id`, `notification_id`, `stage` (passed as `extra=`)
and the `trace_id` of the message being processed (the stages set it and their stage per
message with `processing`). This module adds no message bodies or secrets to a record; call
sites log ids, not payloads.
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

LogFormat = Literal["text", "json"]
CONTEXT_FIELDS = ("tenant_id", "notification_id", "request_id", "stage")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

# The stage and trace of the message this task is processing: logs written meanwhile carry them.
current_message: contextvars.ContextVar[tuple[str | None, str | None]] = contextvars.ContextVar(
    "current_message", default=(None, None)
)


def log_format() -> LogFormat:
    """LOG_FORMAT from the environment: `json`, or `text` (the default)."""
    value = os.environ.get("LOG_FORMAT", "text").strip().lower()
    if value not in ("text", "json"):
        raise ValueError(f"LOG_FORMAT must be 'text' or 'json', not {value!r}")
    return "json" if value == "json" else "text"


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": _iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        stage, trace_id = current_message.get()
        for field in CONTEXT_FIELDS:
            value = getattr(record, field, None)
            if value is not None:
                line[field] = value
        if stage and "stage" not in line:
            line["stage"] = stage
        trace_id = getattr(record, "trace_id", None) or trace_id
        if trace_id:
            line["trace_id"] = trace_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=False, default=str)


def _iso_time(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


def dict_config(fmt: LogFormat, level: str | int = "INFO") -> dict[str, Any]:
    """A logging.config.dictConfig for `fmt`: the root logger to stderr, at `level`."""
    formatter: dict[str, Any] = (
        {"()": f"{__name__}.JsonFormatter"} if fmt == "json" else {"format": TEXT_FORMAT}
    )
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {
            "default": {
                "class": "logging.StreamHandler",
                "formatter": "default",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level, "handlers": ["default"]},
    }


def configure(level: str | int = "INFO", fmt: LogFormat | None = None) -> None:
    """Set up the root logger for a process (the sink, the shim, scripts)."""
    logging.config.dictConfig(dict_config(fmt or log_format(), level))


def route_to_root(*names: str) -> None:
    """Let loggers a server configured for itself (uvicorn's) write through the root's handler."""
    for name in names:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def trace_id_of(traceparent: str | bytes | None) -> str | None:
    """The trace id of a W3C traceparent value, or None."""
    if isinstance(traceparent, bytes | bytearray):
        traceparent = bytes(traceparent).decode("ascii", errors="replace")
    if not traceparent or len(traceparent) < 35 or traceparent[2] != "-":
        return None
    return traceparent[3:35]


@contextmanager
def processing(stage: str | None, trace_id: str | None) -> Iterator[None]:
    """Logs written inside carry `stage` and `trace_id`."""
    token = current_message.set((stage, trace_id))
    try:
        yield
    finally:
        current_message.reset(token)


def loggable(error: BaseException, limit: int = 500) -> str:
    """What a log line may say about `error`: no input values, so no message bodies.

    Pydantic's errors quote the input (`input_value='<the body>'`), SQLAlchemy's append the
    statement's parameters (the rows, bodies included), and Postgres's DETAIL repeats the
    failing row. Those are cut to where and what failed; anything else to `limit` chars.
    """
    errors = getattr(error, "errors", None)
    if callable(errors) and hasattr(error, "error_count"):  # pydantic.ValidationError
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}"
            for e in errors(include_input=False, include_url=False)
        ]
        return _cut(f"{type(error).__name__}: " + "; ".join(parts), limit)
    orig = getattr(error, "orig", None)  # sqlalchemy.exc.StatementError: the driver's error
    if isinstance(orig, BaseException):
        return f"{type(error).__name__}: {loggable(orig, limit)}"
    diag = getattr(error, "diag", None)  # a psycopg error: its primary message, no DETAIL
    if diag is not None and getattr(diag, "message_primary", None):
        sqlstate = getattr(error, "sqlstate", None) or "?"
        return _cut(f"{type(error).__name__} ({sqlstate}): {diag.message_primary}", limit)
    return _cut(f"{type(error).__name__}: {error}", limit)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
