"""Reading configuration files and turning them into validated, complete records.

Validation is the codec's: a RecordValidationError names the field path
(Template.variants[0].channel), which is prefixed with the file and the record's position.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path
from typing import Any

import yaml

from core.sealing import SealingError, SecretBox
from schemas import Codec, RecordValidationError
from streams.config.kinds import ConfigError, Kind

# Written by the CLI on every change; not part of what makes two records "the same".
VOLATILE_FIELDS = ("updated_at",)


def load_file(path: Path) -> Any:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.') or 'yaml'}: {exc}") from exc


def as_list(content: Any, where: str) -> list[dict[str, Any]]:
    """One record or a list of them."""
    records = content if isinstance(content, list) else [content]
    for i, record in enumerate(records):
        if not isinstance(record, dict):
            raise ConfigError(f"{where}[{i}]: expected a mapping, got {type(record).__name__}")
    return records


def normalise(
    codec: Codec, kind: Kind, record: dict[str, Any], where: str, box: SecretBox | None = None
) -> dict[str, Any]:
    """The record as it will be read back: validated, defaults filled in, updated_at stamped.

    A provider record's plaintext `secrets` mapping is sealed here (AES-GCM, bound to
    tenant:provider_id), so plaintext never reaches Kafka.
    """
    if kind.name == "provider" and "secrets" in record:
        record = seal_secrets(record, box, where)
    stamped = {**record, "updated_at": record.get("updated_at") or int(time.time() * 1000)}
    try:
        return codec.decode(codec.encode(kind.schema, stamped), kind.schema)
    except RecordValidationError as exc:
        raise ConfigError(f"{where}: {kind.name} {exc.path}: {exc.problem}") from exc


def seal_secrets(record: dict[str, Any], box: SecretBox | None, where: str) -> dict[str, Any]:
    record = dict(record)
    secrets = record.pop("secrets")
    if not isinstance(secrets, dict) or not all(isinstance(k, str) for k in secrets):
        raise ConfigError(f"{where}: provider secrets: expected a mapping of names to values")
    if box is None:
        raise ConfigError(
            f"{where}: provider secrets need PROVIDER_SECRETS_KEY to seal them "
            "(python -c 'from core.sealing import new_key; print(new_key())')"
        )
    plain = {
        name: value if isinstance(value, str) else json.dumps(value)
        for name, value in secrets.items()
    }
    record["secrets_sealed"] = box.seal(
        plain, tenant_id=str(record.get("tenant_id")), provider_id=str(record.get("provider_id"))
    )
    return record


def comparable(
    record: dict[str, Any] | None, box: SecretBox | None = None
) -> dict[str, Any] | None:
    """What decides whether a record changed. Sealed secrets compare by their plaintext:
    every seal uses a fresh nonce, so the bytes differ even when the secrets do not."""
    if record is None:
        return None
    out = {k: v for k, v in record.items() if k not in VOLATILE_FIELDS}
    sealed = out.get("secrets_sealed")
    if sealed and box is not None:
        # Unreadable: compares as changed, and is rewritten.
        with contextlib.suppress(SealingError):
            out["secrets_sealed"] = box.open(
                sealed, tenant_id=record["tenant_id"], provider_id=record["provider_id"]
            )
    return out
