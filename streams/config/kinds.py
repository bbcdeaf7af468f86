"""The kinds of configuration record: which compacted topic, which schema, which key.

An explicit registry: an unknown kind fails with the valid names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class ConfigError(Exception):
    """Bad configuration input: the message names the file, the record and the field."""


@dataclass(frozen=True)
class Kind:
    name: str
    topic: str  # logical name in topics.yaml
    schema: str  # Avro record name in schemas/
    key_fields: tuple[str, ...]

    def key(self, record: dict[str, Any]) -> str:
        return ":".join(str(record[field]) for field in self.key_fields)

    @property
    def key_format(self) -> str:
        return ":".join(self.key_fields)


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind("tenant", "config.tenants", "Tenant", ("tenant_id",)),
        Kind(
            "template",
            "notifications.templates",
            "Template",
            ("tenant_id", "template_id", "version"),
        ),
        # users.* are co-partitioned with the stage topics: produced with murmur2 like them.
        Kind("preferences", "users.preferences", "Preferences", ("tenant_id", "user_id")),
        Kind("profile", "users.profiles", "UserProfile", ("tenant_id", "user_id")),
        Kind("provider", "config.providers", "ProviderConfig", ("tenant_id", "provider_id")),
    )
}

# The seed file's sections, in the order they are written (tenants before what they own).
SEED_SECTIONS: dict[str, str] = {
    "tenants": "tenant",
    "templates": "template",
    "providers": "provider",
    "profiles": "profile",
    "preferences": "preferences",
}


def kind(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise ConfigError(f"unknown kind {name!r}; valid: {', '.join(KINDS)}") from None
