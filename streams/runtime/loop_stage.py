"""What a stage on the batched runtime (streams/runtime/batch_loop.py) needs from the app:
Avro outputs by logical topic name, Faust-compatible JSON tables, the dead-letter record,
and a Faust service that runs the loop inside the worker process.

A stage moves here from a Faust agent without changing what is on the wire: the same Avro
values and UTF-8 keys on the same topics, the same JSON rows in the same changelog topics (a
table written by the agent is restored here, and the other way round), the same
dead-letter records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from confluent_kafka import Message
from faust import Service

from core import tracing
from core.logs import processing, trace_id_of
from schemas import RegistryUnavailableError
from streams.runtime import metrics
from streams.runtime.app import app, catalog, codec
from streams.runtime.batch_loop import BatchLoop, ChangelogTable, Context, Handler, Output
from streams.runtime.config_views import ViewsNotReady
from streams.runtime.events import dead_letter_record

log = logging.getLogger(__name__)

# Waited out, never dead-lettered (as `streams.runtime.events.guarded` does for agents).
TRANSIENT = (RegistryUnavailableError, ViewsNotReady)


def key_text(message: Message) -> str | None:
    key = message.key()
    return key.decode("utf-8", errors="replace") if key is not None else None


def headers_of(message: Message) -> dict[str, bytes]:
    """The message's headers as the agents saw them (name -> bytes)."""
    raw: list[tuple[str, bytes | None]] = message.headers() or []  # type: ignore[assignment]
    return {name: value for name, value in raw if value is not None}


def child_headers(message: Message) -> dict[str, bytes]:
    """Headers for what handling `message` produces (its trace context's child)."""
    return tracing.child_headers(message.headers() or [])


def decode(message: Message, schema_name: str) -> dict[str, Any]:
    value = message.value()
    if value is None:
        raise ValueError("a message with no value (a tombstone) on a stage topic")
    return codec.decode(value, schema_name)


async def produce(
    context: Context,
    logical_topic: str,
    key: str | None,
    record: dict[str, Any],
    headers: dict[str, bytes] | None = None,
) -> None:
    """Stage `record`, Avro-encoded with its topic's schema, for the batch's produce."""
    spec = catalog[logical_topic]
    schema = spec.value_schema
    assert schema is not None, f"{logical_topic} has no value schema"
    if codec.encodes_without_io(schema):
        value = codec.encode(schema, record)
    else:  # the first encode against a registry registers the schema: a round trip
        value = await asyncio.to_thread(codec.encode, schema, record)
    context.produce(
        spec.physical_name,
        key.encode() if key is not None else None,
        value,
        list(headers.items()) if headers else None,
    )


class JsonTable:
    """A ChangelogTable whose keys are strings and values JSON objects, written as Faust's
    tables write their changelogs (JSON key, JSON value): the same topic serves both."""

    def __init__(self, name: str) -> None:
        self.changelog = ChangelogTable(name, catalog.changelog(name).physical_name)

    @staticmethod
    def _key(key: str) -> bytes:
        return json.dumps(key).encode()

    def get(self, partition: int, key: str) -> dict[str, Any] | None:
        raw = self.changelog.get(partition, self._key(key))
        return json.loads(raw) if raw is not None else None

    def put(self, partition: int, key: str, value: dict[str, Any] | None) -> None:
        raw = json.dumps(value).encode() if value is not None else None
        self.changelog.put(partition, self._key(key), raw)

    def find(self, key: str) -> dict[str, Any] | None:
        """The row in whichever partition this process holds it (read-only pages)."""
        for partition in self.changelog.partitions():
            row = self.get(partition, key)
            if row is not None:
                return row
        return None

    def items(self, partition: int) -> Iterator[tuple[str, dict[str, Any]]]:
        for raw_key, raw in list(self.changelog._partitions.get(partition, {}).items()):
            yield json.loads(raw_key), json.loads(raw)


def sweep_expired(table: JsonTable, partition: int, now_ms: int, ttl_ms: int) -> int:
    """Delete the partition's rows older than ttl (rows carry `at`, epoch ms)."""
    expired = [k for k, row in table.items(partition) if now_ms - int(row.get("at", 0)) > ttl_ms]
    for key in expired:
        table.put(partition, key, None)
    return len(expired)


def dead_letter_output(stage: str, message: Message, error: BaseException) -> Output:
    """The dead-letter record for a message the handler failed on (the agents' shape)."""
    metrics.dead_lettered(stage, type(error).__name__)
    record = dead_letter_record(
        stage=stage,
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        raw_key=message.key(),
        original=message.value(),
        error=error,
    )
    spec = catalog["notifications.dead-letter"]
    assert spec.value_schema is not None
    return Output(
        spec.physical_name,
        message.key(),
        codec.encode(spec.value_schema, record),
        list(child_headers(message).items()) or None,
    )


def timed(stage: str, group: str, handler: Handler) -> Handler:
    """`handler` as the agents run theirs (streams.runtime.events.guarded): its logs carry
    the stage and trace id, a CONSUMER span when spans are exported, and its handling time
    goes to metrics.handled."""

    async def run(message: Message, context: Context) -> None:
        headers = message.headers() or []
        trace_id = trace_id_of(tracing.header_text(headers, "traceparent"))
        with processing(stage, trace_id), _consuming(message, headers, group, stage):
            started = time.perf_counter()
            await handler(message, context)
            metrics.handled(stage, time.perf_counter() - started)

    return run


def _consuming(
    message: Message, headers: Any, group: str, stage: str
) -> AbstractContextManager[None]:
    if not tracing.spans_exported():
        return nullcontext()
    return tracing.consuming(
        headers,
        topic=message.topic() or "",
        partition=message.partition() or 0,
        offset=message.offset() or 0,
        group=group,
        stage=stage,
    )


class LoopService(Service):
    """Runs a BatchLoop for the life of the Faust worker, stopped before the worker exits
    (the loop then drains its outputs and commits what they cover). Subclass it with
    `batch_loop` set, and register the subclass with `@app.service`."""

    batch_loop: BatchLoop

    async def before_start(self) -> None:
        """What must be ready before the first message (views the handlers read)."""

    async def on_start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        await self.before_start()
        try:
            await self.batch_loop.run()
        except Exception as exc:
            log.exception("%s: the loop stopped; the worker stops with it", self.batch_loop.name)
            await app.crash(exc)

    async def on_stop(self) -> None:
        self.batch_loop.stop()
        try:
            await asyncio.wait_for(self._task, 60)
        except Exception:
            log.exception("%s: stopping", self.batch_loop.name)
