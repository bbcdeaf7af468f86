"""Batches from outside the worker: a Python API and a CLI (`python -m streams.batch_client`).

    batch_id, token = create_batch("acme", total_expected=1000)   # the token is shown once
    append_chunk(batch_id, "acme", token, requests)               # NotificationRequest dicts
    close_batch(batch_id, "acme", token)                          # or cancel_batch(...)

Each call produces one BatchCommand to notifications.batches (keyed batch_id, murmur2, an
idempotent producer) and returns once the broker acknowledged it. Commands carry the
token's SHA-256, never the token: the batch stage compares hashes. The batch stage answers
on notifications.batch-events (batch.chunk_accepted / batch.chunk_rejected with a reason).

This module does not import the Faust app, so the shim can use it: `new_batch`,
`build_command` (from the token, or from its hash for a trusted producer that keeps only the
hash) and `command_id_for` are pure and shared with the shim; `request_id_for` with the batch
stage.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from core.catalog import TopicCatalog
from core.kafka_clients import producer_config
from core.settings import Settings, get_settings
from schemas import SchemaCatalog, build_codec

TOPIC = "notifications.batches"
_NAMESPACE = uuid.UUID("4b3c1a52-9d7e-4e0b-8a43-0f4d6b7f2c91")
DEFAULT_CHUNK_SIZE = 500  # requests per append: keeps a command well under 1 MB


class BatchClientError(Exception):
    """A command could not be produced (the broker refused it or did not answer)."""


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_batch() -> tuple[str, str]:
    """A fresh (batch_id, token). The token is shown once; only its hash travels."""
    return str(uuid.uuid4()), secrets.token_urlsafe(32)


def command_id_for(batch_id: str, name: str) -> str:
    """A command id derived from a name ("chunk-3", "close"): a producer that may send the
    same command again (a retried upload) gets the same id, which the stage applies once."""
    return str(uuid.uuid5(_NAMESPACE, f"batch-command:{batch_id}:{name}"))


def request_id_for(batch_id: str, command_id: str, index: int) -> str:
    """The request id the batch stage gives the `index`-th request of an append command."""
    return str(uuid.uuid5(_NAMESPACE, f"batch-request:{batch_id}:{command_id}:{index}"))


def _now_ms() -> int:
    return int(time.time() * 1000)


def normalise_request(request: dict[str, Any], tenant_id: str) -> dict[str, Any]:
    """A NotificationRequest dict from a convenient one: `data` (an object) becomes
    `data_json`, and the tenant and time are filled in. Avro defaults fill the rest."""
    out = dict(request)
    if "data" in out:
        out["data_json"] = json.dumps(out.pop("data"))
    out.setdefault("tenant_id", tenant_id)
    out.setdefault("occurred_at", _now_ms())
    return out


def build_command(
    kind: str,
    batch_id: str,
    tenant_id: str,
    token: str | None = None,
    *,
    token_hash: str | None = None,
    command_id: str | None = None,
    total_expected: int | None = None,
    requests: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A BatchCommand record. Give the token, or (exactly one of the two) its SHA-256."""
    if (token is None) == (token_hash is None):
        raise ValueError("give either the token or its hash")
    return {
        "command_id": command_id or str(uuid.uuid4()),
        "kind": kind,
        "batch_id": batch_id,
        "tenant_id": tenant_id,
        "token_sha256": token_sha256(token) if token is not None else token_hash,
        "total_expected": total_expected,
        "requests": [normalise_request(r, tenant_id) for r in requests],
        "issued_at": _now_ms(),
    }


class BatchClient:
    def __init__(self, settings: Settings | None = None, *, timeout: float = 30.0) -> None:
        self.settings = settings or get_settings()
        self.timeout = timeout
        self._topic = TopicCatalog.load(self.settings).name(TOPIC)
        self._codec = build_codec(self.settings.schema_registry_url, SchemaCatalog.load())
        self._producer = Producer(producer_config(self.settings))

    def create_batch(self, tenant_id: str, total_expected: int | None = None) -> tuple[str, str]:
        """A new batch; returns (batch_id, token). Keep the token: it is not stored anywhere."""
        if total_expected is not None and total_expected < 0:
            raise ValueError("total_expected: must not be negative")
        batch_id, token = new_batch()
        self._send(
            build_command("create", batch_id, tenant_id, token, total_expected=total_expected)
        )
        return batch_id, token

    def append_chunk(
        self,
        batch_id: str,
        tenant_id: str,
        token: str,
        requests: Sequence[dict[str, Any]],
        command_id: str | None = None,
    ) -> str:
        """Append requests; returns the command id (resending it is applied once)."""
        command = build_command(
            "append", batch_id, tenant_id, token, command_id=command_id, requests=requests
        )
        self._send(command)
        return str(command["command_id"])

    def close_batch(self, batch_id: str, tenant_id: str, token: str) -> str:
        return self._simple("close", batch_id, tenant_id, token)

    def cancel_batch(self, batch_id: str, tenant_id: str, token: str) -> str:
        return self._simple("cancel", batch_id, tenant_id, token)

    def _simple(self, kind: str, batch_id: str, tenant_id: str, token: str) -> str:
        command = build_command(kind, batch_id, tenant_id, token)
        self._send(command)
        return str(command["command_id"])

    def _send(self, command: dict[str, Any]) -> None:
        errors: list[str] = []

        def on_delivery(err: KafkaError | None, _msg: Message) -> None:
            if err is not None:
                errors.append(err.str())

        value = self._codec.encode("BatchCommand", command)
        self._producer.produce(
            self._topic, key=command["batch_id"], value=value, on_delivery=on_delivery
        )
        if self._producer.flush(self.timeout) != 0:
            raise BatchClientError(f"{command['kind']}: no acknowledgement in {self.timeout}s")
        if errors:
            raise BatchClientError(f"{command['kind']}: {errors[0]}")


# -- CLI -----------------------------------------------------------------------------------


def read_jsonl(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"line {number}: not valid JSON ({exc})") from exc
        if not isinstance(value, dict):
            raise ValueError(f"line {number}: expected a JSON object")
        yield value


def chunks(items: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m streams.batch_client",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="create a batch; prints its id and token")
    create.add_argument("--tenant", required=True)
    create.add_argument("--total-expected", type=int, default=None)
    for name in ("append", "close", "cancel"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--batch-id", required=True)
        cmd.add_argument("--tenant", required=True)
        cmd.add_argument(
            "--token",
            default=os.environ.get("BATCH_TOKEN"),
            required="BATCH_TOKEN" not in os.environ,
            help="the token `create` printed (or BATCH_TOKEN: keeps it out of `ps`)",
        )
        if name == "append":
            cmd.add_argument("file", help="JSON lines of NotificationRequests ('-': stdin)")
            cmd.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    client = BatchClient()
    if args.command == "create":
        batch_id, token = client.create_batch(args.tenant, args.total_expected)
        print(f"batch_id {batch_id}\ntoken {token}")
    elif args.command == "append":
        source = sys.stdin if args.file == "-" else open(args.file)  # noqa: SIM115
        with source:
            for chunk in chunks(read_jsonl(source), args.chunk_size):
                command_id = client.append_chunk(args.batch_id, args.tenant, args.token, chunk)
                print(f"appended {len(chunk)} requests (command {command_id})")
    elif args.command == "close":
        client.close_batch(args.batch_id, args.tenant, args.token)
    else:
        client.cancel_batch(args.batch_id, args.tenant, args.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
