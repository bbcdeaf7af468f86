"""Triggers: upstream domain events (JSON on topics such as orders.events) -> notifications.

A YAML rules file (TRIGGER_RULES_FILE, default streams/config/triggers.yaml) says which events
become which NotificationRequest; see docs/triggers.md. It is validated when the worker
starts: a bad file stops the worker with the rule and field at fault.

<upstream topics the rules name> -> notifications.requests (keyed tenant_id:user_id)
Non-matching events are counted and skipped; malformed JSON, or an event a matching rule
cannot build a request from (no recipient), is dead-lettered and the partition moves on.
"""

from __future__ import annotations

import json

from faust.types import EventT, StreamT

from streams import metrics
from streams.app import app, catalog, settings, topics
from streams.events import Rejected, dead_letter, guarded, now_ms, outgoing_headers
from streams.ids import recipient_key
from streams.lanes import request_topic
from streams.trigger_rules import (
    Rule,
    TriggerConfigError,
    TriggerError,
    build_request,
    load_rules,
    matches,
    resolve_path,
)

STAGE = "triggers"


# -- the agent --------------------------------------------------------------------------------


def _configured_rules() -> list[Rule]:
    if not settings.trigger_rules_file:
        return []
    try:
        return load_rules(resolve_path(settings.trigger_rules_file), catalog)
    except TriggerConfigError as exc:
        raise SystemExit(f"refusing to start: {exc}") from None


RULES = _configured_rules()
# physical topic name -> logical name, for the topics the rules read
SOURCES = {catalog.name(rule.topic): rule.topic for rule in RULES}


async def handle(event: EventT) -> None:
    message = event.message
    logical = SOURCES[message.topic]
    try:
        value = json.loads(event.value) if event.value is not None else None
    except (ValueError, TypeError) as exc:
        await dead_letter(event, stage=STAGE, error=Rejected(f"not valid JSON: {exc}"))
        return
    matched = [rule for rule in RULES if rule.topic == logical and matches(rule, value)]
    if not matched:
        metrics.processed(STAGE, "no_match")
        return
    headers = outgoing_headers(event)
    for rule in matched:
        try:
            request = build_request(
                rule,
                value,
                topic=logical,
                partition=message.partition,
                offset=message.offset,
                now=now_ms(),
            )
        except TriggerError as exc:
            await dead_letter(event, stage=STAGE, error=exc)
            continue
        key = recipient_key(request["tenant_id"], request["recipients"][0]["user_id"])
        await topics.sink(request_topic(request)).send(key=key, value=request, headers=headers)
        metrics.processed(STAGE, f"triggered:{rule.name}")


if SOURCES:
    _source = app.topic(
        *SOURCES, key_type=None, value_type=None, key_serializer="raw", value_serializer="raw"
    )

    @app.agent(_source, concurrency=1)
    async def trigger_notifications(stream: StreamT) -> None:
        async for event in stream.events():
            await guarded(STAGE, event, handle)
