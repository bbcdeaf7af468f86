"""Provider settings travel as strings (config.providers records, the admin API's body);
this turns one back into the value the connector's model expects.

A field whose type takes text keeps the string as it is: a sender such as
`"[Acme] <no-reply@acme.example>"` starts with `[` but is not JSON. Fields that take lists or
objects (Apprise `urls`, header maps) are decoded from JSON; text that is not JSON is passed on
unchanged, so the model's validation names the field instead of a decoder raising.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any

from pydantic import BaseModel, SecretStr

_TEXT = (str, SecretStr)


def _takes_only_text(annotation: Any) -> bool:
    """str, SecretStr or an Optional/Literal/union of them; False where a container fits."""
    if annotation in _TEXT:
        return True
    if typing.get_origin(annotation) is typing.Literal:
        return all(isinstance(arg, str) for arg in typing.get_args(annotation))
    args = typing.get_args(annotation)
    if not args or typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return False
    members = [arg for arg in args if arg is not type(None)]
    return bool(members) and all(_takes_only_text(arg) for arg in members)


def setting_from_text(model: type[BaseModel], name: str, raw: str) -> Any:
    field = model.model_fields.get(name)
    if field is not None and _takes_only_text(field.annotation):
        return raw
    if raw[:1] not in "[{":
        return raw
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def settings_from_text(model: type[BaseModel], raw: dict[str, str]) -> dict[str, Any]:
    return {name: setting_from_text(model, name, value) for name, value in raw.items()}
