"""The topic catalogue: topics.yaml, loaded once, with names resolved for this deployment.

Everything that names a topic (Faust topics, the shim's producer, the sink, provisioning,
tests) asks this module, so a topic name is spelled once, in topics.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict

from core.settings import Settings

TOPICS_FILE = Path(__file__).resolve().parent.parent / "topics.yaml"


class TopicSpec(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str  # logical name as written in topics.yaml
    physical_name: str  # with TOPIC_PREFIX and {app_id} applied
    partitions: int
    replication_factor: int
    cleanup_policy: Literal["delete", "compact", "compact,delete"]
    retention_ms: int | None = None
    # Deletion (retention.*) only removes closed segments: a short segment.ms bounds how long
    # past retention_ms a record lingers; retention.bytes bounds a partition's size.
    segment_ms: int | None = None
    retention_bytes: int | None = None
    key: str
    value_schema: str | None
    # Upstream JSON topics only: the dotted path of the field that names an event's tenant.
    # The operator sets it; tenants' trigger rules only see events whose field holds their id.
    tenant_field: str = "tenant_id"
    doc: str = ""

    def kafka_config(self) -> dict[str, str]:
        config: dict[str, str] = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            config["retention.ms"] = str(self.retention_ms)
        if self.segment_ms is not None:
            config["segment.ms"] = str(self.segment_ms)
        if self.retention_bytes is not None:
            config["retention.bytes"] = str(self.retention_bytes)
        return config


class TopicCatalog:
    def __init__(self, specs: list[TopicSpec]) -> None:
        self._by_name = {spec.name: spec for spec in specs}

    @classmethod
    def load(cls, settings: Settings, path: Path = TOPICS_FILE) -> TopicCatalog:
        raw = yaml.safe_load(path.read_text())
        defaults = raw.get("defaults", {})
        specs = []
        for entry in raw["topics"]:
            merged = {**defaults, **entry}
            physical = settings.topic(merged["name"].format(app_id=settings.tables_app_id))
            specs.append(TopicSpec(physical_name=physical, **merged))
        return cls(specs)

    def __getitem__(self, logical_name: str) -> TopicSpec:
        try:
            return self._by_name[logical_name]
        except KeyError:
            valid = ", ".join(sorted(self._by_name))
            raise KeyError(
                f"topic {logical_name!r} is not in topics.yaml; known: {valid}"
            ) from None

    def name(self, logical_name: str) -> str:
        """The physical topic name for a logical name."""
        return self[logical_name].physical_name

    def changelog(self, table_name: str) -> TopicSpec:
        return self["{app_id}-" + table_name + "-changelog"]

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._by_name.values())


def every_group_catalog(settings: Settings) -> list[TopicSpec]:
    """The topics of every worker group: each lane's group has its own table changelogs."""
    specs: dict[str, TopicSpec] = {}
    for lane in ("transactional", "bulk"):
        for spec in TopicCatalog.load(settings.model_copy(update={"worker_lane": lane})):
            specs[spec.physical_name] = spec
    return list(specs.values())
