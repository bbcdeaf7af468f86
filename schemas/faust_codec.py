"""Faust serializers backed by the Avro codec: one registered codec per record type.

After ``register_faust_codecs(codec, catalog)`` a topic declared with
``value_serializer="avro:Notification"`` produces and consumes Avro in whichever framing the
codec uses, and agents see plain dicts shaped by ``schemas/notification.avsc``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from faust.serializers import codecs as faust_codecs
from faust.types.codecs import CodecT

from .catalog import SchemaCatalog
from .codec import Codec
from .errors import CatalogError, EncodeError

__all__ = ["AvroFaustCodec", "codec_name", "register_faust_codecs"]

_PREFIX = "avro:"


def codec_name(record_name: str) -> str:
    """The Faust codec name of a record: ``avro:<RecordName>`` (short name)."""
    return _PREFIX + record_name.rpartition(".")[2]


class AvroFaustCodec(faust_codecs.Codec):
    """Encodes a mapping as one record type; decodes to a dict."""

    def __init__(
        self,
        children: tuple[CodecT, ...] | None = None,
        *,
        codec: Codec,
        schema_name: str,
    ) -> None:
        # Both go into kwargs because Faust's clone() (used by "avro:X|gzip" chains) rebuilds the
        # codec from them.
        super().__init__(children, codec=codec, schema_name=schema_name)
        self._codec = codec
        self._schema_name = schema_name

    def _dumps(self, obj: Any) -> bytes:
        if not isinstance(obj, Mapping):
            raise EncodeError(
                f"{self._schema_name}: expected a mapping to encode, got {type(obj).__name__}"
            )
        return self._codec.encode(self._schema_name, obj)

    def _loads(self, s: bytes) -> Any:
        return self._codec.decode(s, self._schema_name)


def register_faust_codecs(codec: Codec, catalog: SchemaCatalog) -> list[str]:
    """Register ``avro:<RecordName>`` for every record in the catalog; return the names.

    Registering again replaces the earlier codecs (e.g. a test switching framings).
    """
    names: dict[str, str] = {}
    for full_name in catalog.record_names():
        name = codec_name(full_name)
        if name in names:
            raise CatalogError(f"{full_name} and {names[name]} would share the codec name {name}")
        names[name] = full_name
    for name, full_name in names.items():
        faust_codecs.register(name, AvroFaustCodec(codec=codec, schema_name=full_name))
    return list(names)
