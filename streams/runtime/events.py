"""What every stage does besides its own job: decode, emit status, dead-letter, trace."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from aiokafka.errors import KafkaError, MessageSizeTooLargeError, RecordTooLargeError
from faust.types import EventT

from core import tracing
from core.ids import status_event_id
from core.logs import loggable, processing, trace_id_of
from schemas import RegistryUnavailableError, SchemaError
from streams.runtime import metrics
from streams.runtime.app import app, codec, settings, topics
from streams.runtime.config_views import ViewsNotReady

log = logging.getLogger(__name__)


def now_ms() -> int:
    return int(time.time() * 1000)


class Rejected(Exception):
    """A message that decodes but cannot be processed; it goes to the dead-letter topic."""


def decode(event: EventT, schema_name: str) -> dict[str, Any]:
    """Decode a raw event value; raises SchemaError for bytes no schema can read."""
    value = event.value
    if not isinstance(value, bytes | bytearray):
        raise Rejected(f"expected Avro bytes, got {type(value).__name__}")
    return codec.decode(bytes(value), schema_name)


async def decode_or_dead_letter(
    event: EventT, schema_name: str, stage: str
) -> dict[str, Any] | None:
    """The decoded value, or None after dead-lettering a message no schema can read."""
    try:
        return decode(event, schema_name)
    except RegistryUnavailableError:
        raise  # transient: `guarded` retries
    except (SchemaError, Rejected) as exc:
        await dead_letter(event, stage=stage, error=exc)
        return None


def outgoing_headers(event: EventT) -> dict[str, bytes]:
    """Headers to put on messages produced while processing `event` (trace context)."""
    return tracing.child_headers(event.headers)


async def emit_status(
    notification: dict[str, Any],
    status: str,
    *,
    stage: str,
    headers: dict[str, bytes],
    reason: str | None = None,
    retriable: bool = False,
    provider: str | None = None,
    provider_message_id: str | None = None,
    deferred_until: int | None = None,
) -> None:
    """Append one transition to notifications.status, keyed by notification id."""
    attempt = notification.get("attempt", 0)
    record = {
        "event_id": status_event_id(
            notification["notification_id"], status, attempt, str(deferred_until or "")
        ),
        "notification_id": notification["notification_id"],
        "request_id": notification["request_id"],
        "tenant_id": notification["tenant_id"],
        "batch_id": notification.get("batch_id"),
        "channel": notification.get("channel"),
        "recipient_id": (notification.get("recipient") or {}).get("user_id"),
        "status": status,
        "reason": reason,
        "retriable": retriable,
        "provider": provider,
        "provider_message_id": provider_message_id,
        "stage": stage,
        "attempt": attempt,
        "deferred_until": deferred_until,
        "request_occurred_at": notification["occurred_at"],
        "occurred_at": now_ms(),
    }
    metrics.status_emitted(stage, status)
    await topics.sink("notifications.status").send(
        key=notification["notification_id"], value=record, headers=headers
    )


def _raw(value: Any) -> bytes | None:
    return value if isinstance(value, bytes) else None


def dead_letter_record(
    *,
    stage: str,
    topic: str,
    partition: int,
    offset: int,
    raw_key: bytes | None,
    original: bytes | None,
    error: BaseException,
    tenant_id: str | None = None,
    notification_id: str | None = None,
    error_history: list[str] | None = None,
    source_topic: str | None = None,
) -> dict[str, Any]:
    """A DeadLetter record: the message, where it was read, and why it was parked."""
    error_text = str(error)[:4000]
    if original is not None and len(original) > settings.dead_letter_max_value_bytes:
        # Kept, it would not fit the dead-letter topic: say where the original still is.
        error_text += (
            f" (the original {len(original)} bytes are not kept, over "
            f"DEAD_LETTER_MAX_VALUE_BYTES={settings.dead_letter_max_value_bytes}: read them at "
            f"{topic}[{partition}]@{offset} while retention keeps them)"
        )
        original = None
    return {
        "stage": stage,
        "source_topic": source_topic or topic,
        "source_partition": partition,
        "source_offset": offset,
        "key": raw_key,
        "value": original,
        "error_type": type(error).__name__,
        "error": error_text,
        "tenant_id": tenant_id,
        "notification_id": notification_id,
        "failed_at": now_ms(),
        "error_history": error_history or [],
    }


async def dead_letter(
    event: EventT,
    *,
    stage: str,
    error: BaseException,
    tenant_id: str | None = None,
    notification_id: str | None = None,
    error_history: list[str] | None = None,
    source_topic: str | None = None,
    value: bytes | None = None,
) -> None:
    """Park a message with its error; the partition moves on.

    `source_topic` and `value` replace the consumed message's own, for stages that park a
    cleaned-up copy where a replay should send it (deliver: its delivery topic, attempts reset).
    """
    message = event.message
    log.warning(
        "dead-lettering %s[%s]@%s in %s: %s",
        message.topic,
        message.partition,
        message.offset,
        stage,
        loggable(error),
        extra={"tenant_id": tenant_id, "notification_id": notification_id},
    )
    raw_key = message.key
    record = dead_letter_record(
        stage=stage,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        raw_key=raw_key if isinstance(raw_key, bytes) else None,
        original=value if value is not None else _raw(message.value),
        error=error,
        tenant_id=tenant_id,
        notification_id=notification_id,
        error_history=error_history,
        source_topic=source_topic,
    )
    metrics.dead_lettered(stage, type(error).__name__)
    tracing.mark_failed(f"dead-lettered: {type(error).__name__}: {error}")
    await topics.sink("notifications.dead-letter").send(
        key=event.key if isinstance(event.key, str) else None,
        value=record,
        headers=outgoing_headers(event),
    )


# Infrastructure that is down, not a bad message: wait for it rather than park the message.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    RegistryUnavailableError,
    KafkaError,
    ViewsNotReady,
)
# ...except a message too large for Kafka: the fault of what the handler produced, never
# cured by waiting (retrying it would hold the partition for good).
TOO_LARGE_ERRORS: tuple[type[Exception], ...] = (MessageSizeTooLargeError, RecordTooLargeError)
MAX_BACKOFF_SECONDS = 30.0


def _too_large(exc: BaseException) -> bool:
    # Faust wraps the producer's error in ProducerSendError.
    return isinstance(exc, TOO_LARGE_ERRORS) or isinstance(exc.__cause__, TOO_LARGE_ERRORS)


def _consuming(event: EventT, stage: str) -> AbstractContextManager[None]:
    if not tracing.spans_exported():
        return nullcontext()
    message = event.message
    return tracing.consuming(
        event.headers,
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        group=app.conf.id,
        stage=stage,
    )


async def guarded(stage: str, event: EventT, handler: Any) -> None:
    """Run a stage's handler; an unexpected error dead-letters the message, never the agent.

    The handlers catch what they expect (decode and validation errors). A transient
    infrastructure error (schema registry or Kafka unreachable) retries the handler with
    backoff, holding the partition: handlers are idempotent, and parking every message
    while the registry is down would empty the pipeline into the dead-letter topic.
    Anything else is a bug or a malformed message no rule foresaw: park it with its error
    so the partition keeps moving and an operator can replay it after a fix. So is output
    Kafka refuses as too large, though a KafkaError: no wait makes it fit.
    """
    trace_id = trace_id_of(tracing.header_text(event.headers, "traceparent"))
    with processing(stage, trace_id), _consuming(event, stage):
        delay = 0.5
        while True:
            started = time.perf_counter()
            try:
                await handler(event)
                metrics.handled(stage, time.perf_counter() - started)
                return
            except Exception as exc:
                too_large = _too_large(exc)
                if isinstance(exc, TRANSIENT_ERRORS) and not too_large:
                    log.warning("%s: %s; retrying in %.1fs", stage, loggable(exc), delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_BACKOFF_SECONDS)
                    continue
                if not too_large:
                    log.exception("unexpected error in %s", stage)
                await dead_letter(event, stage=stage, error=exc)
                return


__all__ = [
    "Rejected",
    "SchemaError",
    "dead_letter",
    "decode",
    "emit_status",
    "guarded",
    "now_ms",
    "outgoing_headers",
]
