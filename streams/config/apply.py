"""Write configuration records idempotently: only those that differ from the topic's state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.catalog import TopicCatalog
from core.sealing import SealingError, SecretBox
from core.settings import Settings
from schemas import Codec
from streams.config.kafka import Writer, read_compacted
from streams.config.kinds import ConfigError, Kind
from streams.config.kinds import kind as kind_named
from streams.config.records import comparable, normalise


@dataclass
class Outcome:
    written: dict[str, int] = field(default_factory=dict)  # kind -> records written
    unchanged: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        kinds = list(dict.fromkeys([*self.written, *self.unchanged]))
        out = [
            f"{k}: {self.written.get(k, 0)} written, {self.unchanged.get(k, 0)} unchanged"
            for k in kinds
        ]
        total_written = sum(self.written.values())
        total_unchanged = sum(self.unchanged.values())
        out.append(f"total: {total_written} written, {total_unchanged} unchanged")
        return out


def current_state(
    settings: Settings, catalog: TopicCatalog, codec: Codec, kind: Kind
) -> dict[str, dict[str, Any]]:
    """key -> decoded record of a kind's topic; undecodable entries count as absent."""
    state: dict[str, dict[str, Any]] = {}
    for key, value in read_compacted(settings, catalog, kind.topic).items():
        try:
            state[key] = codec.decode(value, kind.schema)
        except Exception:  # an entry we cannot read is replaced, not fatal
            continue
    return state


def provider_box(settings: Settings) -> SecretBox | None:
    key = settings.provider_secrets_key
    old = {
        kid: value.get_secret_value() for kid, value in settings.provider_secrets_old_keys.items()
    }
    try:
        return SecretBox.from_settings(
            key.get_secret_value() if key else None, settings.provider_secrets_key_id, old
        )
    except SealingError as exc:
        raise ConfigError(f"PROVIDER_SECRETS_KEY: {exc}") from exc


def apply(
    settings: Settings,
    catalog: TopicCatalog,
    codec: Codec,
    batches: list[tuple[Kind, list[tuple[str, dict[str, Any]]]]],
) -> Outcome:
    """`batches`: per kind, (where-in-the-input, raw record). Everything is validated before
    anything is written, so a bad record in a file writes nothing."""
    box = provider_box(settings)
    prepared: list[tuple[Kind, list[dict[str, Any]]]] = []
    for kind, records in batches:
        prepared.append((kind, [normalise(codec, kind, r, where, box) for where, r in records]))
    outcome = Outcome()
    writer = Writer(settings, catalog)
    try:
        for kind, complete in prepared:
            state = current_state(settings, catalog, codec, kind)
            for record in complete:
                key = kind.key(record)
                if comparable(state.get(key), box) == comparable(record, box):
                    outcome.unchanged[kind.name] = outcome.unchanged.get(kind.name, 0) + 1
                    continue
                writer.send(kind.topic, key, codec.encode(kind.schema, record))
                state[key] = record  # a repeat of the key later in the input is unchanged
                outcome.written[kind.name] = outcome.written.get(kind.name, 0) + 1
    finally:
        writer.close()
    return outcome


def delete(settings: Settings, catalog: TopicCatalog, kind: Kind, keys: list[str]) -> int:
    """Tombstone each key (a null value); compaction then forgets it."""
    for key in keys:
        if not key.strip():
            raise ConfigError(
                f"an empty key cannot be deleted (a {kind.name} key is {kind.key_format})"
            )
    writer = Writer(settings, catalog)
    try:
        for key in keys:
            writer.send(kind.topic, key, None)
    finally:
        writer.close()
    return len(keys)


def reseal(settings: Settings, catalog: TopicCatalog, codec: Codec) -> list[str]:
    """Re-seals every provider configuration whose secrets name another key than the current
    PROVIDER_SECRETS_KEY_ID (after a rotation), so the old key can then be retired. Records
    that do not open are reported and left as they are."""
    box = provider_box(settings)
    if box is None:
        raise ConfigError("PROVIDER_SECRETS_KEY is not set: nothing to re-seal with")
    provider = kind_named("provider")
    resealed, current, failed = 0, 0, []
    writer = Writer(settings, catalog)
    try:
        for key, record in current_state(settings, catalog, codec, provider).items():
            sealed = record.get("secrets_sealed")
            if not sealed:
                continue
            if SecretBox.key_id_of(sealed) == box.current_key_id:
                current += 1
                continue
            ids = {"tenant_id": record["tenant_id"], "provider_id": record["provider_id"]}
            try:
                secrets = box.open(sealed, **ids)
            except SealingError as exc:
                failed.append(f"{key}: {exc}")
                continue
            record = {**record, "secrets_sealed": box.seal(secrets, **ids)}
            writer.send(provider.topic, key, codec.encode(provider.schema, record))
            resealed += 1
    finally:
        writer.close()
    kid = box.current_key_id
    lines = [f"providers: {resealed} re-sealed with key {kid}, {current} already on it"]
    lines += [f"not re-sealed: {line}" for line in failed]
    return lines
