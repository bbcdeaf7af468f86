"""Reading configuration files and turning them into validated, complete records.

Validation is the codec's: a RecordValidationError names the field path
(Template.variants[0].channel), which is prefixed with the file and the record's position.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

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


def normalise(codec: Codec, kind: Kind, record: dict[str, Any], where: str) -> dict[str, Any]:
    """The record as it will be read back: validated, defaults filled in, updated_at stamped."""
    stamped = {**record, "updated_at": record.get("updated_at") or int(time.time() * 1000)}
    try:
        return codec.decode(codec.encode(kind.schema, stamped), kind.schema)
    except RecordValidationError as exc:
        raise ConfigError(f"{where}: {kind.name} {exc.path}: {exc.problem}") from exc


def comparable(record: dict[str, Any] | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {k: v for k, v in record.items() if k not in VOLATILE_FIELDS}
