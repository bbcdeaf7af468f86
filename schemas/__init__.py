"""Avro event shapes (the .avsc files next to this module) and the one codec that reads and
writes them everywhere: Faust topics, the HTTP shim, the sinks.

    catalog = SchemaCatalog.load()
    codec = build_codec(settings.schema_registry_url, catalog)  # URL: Confluent, else single-object
    register_faust_codecs(codec, catalog)  # then value_serializer="avro:Notification"
"""

from .catalog import DEFAULT_SCHEMA_DIR, SchemaCatalog, SchemaEntry
from .codec import (
    CONFLUENT_MAGIC,
    SINGLE_OBJECT_MAGIC,
    Codec,
    ConfluentCodec,
    SingleObjectCodec,
    build_codec,
)
from .errors import (
    CatalogError,
    CorruptMessageError,
    DecodeError,
    EncodeError,
    RecordValidationError,
    RegistryUnavailableError,
    SchemaError,
    SchemaMismatchError,
    SchemaNotFoundError,
    UnknownSchemaError,
)
from .faust_codec import AvroFaustCodec, codec_name, register_faust_codecs

__all__ = [
    "CONFLUENT_MAGIC",
    "DEFAULT_SCHEMA_DIR",
    "SINGLE_OBJECT_MAGIC",
    "AvroFaustCodec",
    "CatalogError",
    "Codec",
    "ConfluentCodec",
    "CorruptMessageError",
    "DecodeError",
    "EncodeError",
    "RecordValidationError",
    "RegistryUnavailableError",
    "SchemaCatalog",
    "SchemaEntry",
    "SchemaError",
    "SchemaMismatchError",
    "SchemaNotFoundError",
    "SingleObjectCodec",
    "UnknownSchemaError",
    "build_codec",
    "codec_name",
    "register_faust_codecs",
]
