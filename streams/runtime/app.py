"""The Faust app, the codec and topic factories every stage module uses.

Stage modules import `app` and `topics` from here and register their agents on import;
`streams/__main__.py` imports them all and starts the worker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faust.serializers import codecs

from core.catalog import TopicCatalog
from core.kafka_auth import faust_credentials
from core.logs import dict_config, log_format
from core.settings import get_settings
from schemas import SchemaCatalog, build_codec, register_faust_codecs
from schemas.faust_codec import codec_name
from streams.runtime.faust_fixes import FixedApp

settings = get_settings()
catalog = TopicCatalog.load(settings)
schema_catalog = SchemaCatalog.load()
codec = build_codec(settings.schema_registry_url, schema_catalog)
register_faust_codecs(codec, schema_catalog)


class Utf8(codecs.Codec):
    """Keys are plain UTF-8 strings on the wire (tenant:user, notification ids)."""

    def _dumps(self, obj: Any) -> bytes:
        return obj.encode() if isinstance(obj, str) else bytes(obj)

    def _loads(self, s: bytes) -> str:
        return s.decode("utf-8", errors="replace")


codecs.register("utf8", Utf8())

# Faust creates the app's folder but not its parents.
FAUST_DATA_ROOT = Path("var/faust")
FAUST_DATA_ROOT.mkdir(parents=True, exist_ok=True)

app = FixedApp(
    settings.full_app_id,
    broker=f"kafka://{settings.kafka_bootstrap_servers}",
    # TLS/SASL for every consumer and producer of the app (tables' changelogs included).
    broker_credentials=faust_credentials(settings),
    store="memory://",
    # Faust's default is "<app id>-data" in the working directory: one stray folder per
    # topic prefix (every test module, every bench run) at the top of the repo.
    datadir=str(FAUST_DATA_ROOT / "{conf.name}-data"),
    # Topics (changelogs included) come from topics.yaml via core.provision; a worker
    # never creates one with guessed settings.
    topic_allow_declare=False,
    topic_disable_leader=True,
    topic_partitions=catalog["notifications.requests"].partitions,
    consumer_auto_offset_reset="earliest",
    producer_acks=-1,
    # Let sends of one event-loop turn share produce requests: with no linger aiokafka sent
    # nearly one request per message, each costing the worker a socket write and the broker
    # a request on the same cores. 5 ms per hop is well inside the latency budget.
    producer_linger=0.005,
    web_enabled=settings.worker_web_port is not None,
    web_port=settings.worker_web_port or 6066,
    web_host="127.0.0.1",
    web_bind="127.0.0.1",
    broker_commit_interval=1.0,
    broker_session_timeout=settings.worker_session_timeout_seconds,
    broker_heartbeat_interval=min(3.0, settings.worker_session_timeout_seconds / 3),
    stream_buffer_maxsize=1024,
    TableManager="streams.runtime.faust_fixes:FixedTableManager",
    # LOG_FORMAT=json: one JSON object per line; otherwise Faust's own (coloured on a terminal).
    logging_config=dict_config("json", settings.log_level) if log_format() == "json" else None,
)


class Topics:
    """Faust topic objects built from topics.yaml, never spelled twice.

    `source` topics hand agents raw bytes: each stage decodes explicitly so an undecodable
    message is dead-lettered instead of killing the agent. `sink` topics encode through the
    Avro codec registered by name.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Any] = {}

    def source(self, logical_name: str) -> Any:
        return self._get(logical_name, "raw")

    def sink(self, logical_name: str) -> Any:
        schema = catalog[logical_name].value_schema
        assert schema is not None, f"{logical_name} has no value schema"
        return self._get(logical_name, codec_name(schema))

    def _get(self, logical_name: str, value_serializer: str) -> Any:
        key = (logical_name, value_serializer)
        if key not in self._cache:
            spec = catalog[logical_name]
            self._cache[key] = app.topic(
                spec.physical_name,
                partitions=spec.partitions,
                key_type=str,
                key_serializer="utf8",
                value_serializer=value_serializer,
                internal=False,
            )
        return self._cache[key]


topics = Topics()


def changelog(table_name: str) -> Any:
    # JSON keys and values: the serializers Faust's tables write their changelogs with.
    # The topic must decode with the same ones, or recovery restores keys that no lookup
    # matches (the table looks empty after a restart).
    spec = catalog.changelog(table_name)
    return app.topic(
        spec.physical_name,
        partitions=spec.partitions,
        key_serializer="json",
        value_serializer="json",
        compacting=True,
        deleting=False,
    )


def table(name: str) -> Any:
    """A plain (non-windowed) table with a JSON changelog declared in topics.yaml."""
    spec = catalog.changelog(name)
    table: Any = app.Table(
        name,
        default=None,
        partitions=spec.partitions,
        key_type=str,
        changelog_topic=changelog(name),
    )
    assert table.key_serializer == table.changelog_topic.key_serializer == "json"
    return table
