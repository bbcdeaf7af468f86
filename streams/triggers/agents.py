"""Triggers: upstream domain events (JSON on topics such as orders.events) -> notifications.

A YAML rules file (TRIGGER_RULES_FILE, default streams/config/triggers.yaml) says which events
become which NotificationRequest; see docs/triggers.md. It is validated when the worker
starts: a bad file stops the worker with the rule and field at fault. Tenants' own rules
(config.trigger-rules, from the admin API) apply too, each only to its tenant's events; the
worker holds that topic in full and follows it, so a rule applies without a restart.

<every upstream topic of topics.yaml> -> notifications.requests (keyed tenant_id:user_id)
Non-matching events are counted and skipped; malformed JSON, or an event a matching rule
cannot build a request from (no recipient), is dead-lettered and the partition moves on.
"""

from __future__ import annotations

import asyncio
import json

from faust.types import EventT, StreamT

from core.ids import recipient_key
from core.lanes import request_topic
from streams.runtime import metrics
from streams.runtime.app import app, catalog, codec, settings, topics
from streams.runtime.config_views import ViewsNotReady
from streams.runtime.events import Rejected, dead_letter, guarded, now_ms, outgoing_headers
from streams.runtime.replicated import ReplicatedView
from streams.triggers.rules import (
    Rule,
    TenantRules,
    TriggerConfigError,
    TriggerError,
    build_request,
    load_rules,
    matches,
    resolve_path,
    rules_for,
    upstream_topics,
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
# physical topic name -> logical name: every topic a rule (the file's or a tenant's) may read
SOURCES = {catalog.name(topic): topic for topic in upstream_topics(catalog)}

# tenant_id:rule_id -> TriggerRule, replicated in full (tenants' rules from the admin API)
TENANT_RULES = TenantRules(catalog)
_RULES_TOPIC = "config.trigger-rules"
_rules_view = ReplicatedView(
    settings,
    catalog.name(_RULES_TOPIC),
    catalog[_RULES_TOPIC].partitions,
    lambda value: codec.decode(value, "TriggerRule"),
)
_rules_view.add_listener(TENANT_RULES.apply)
READY_TIMEOUT_SECONDS = 60.0
_rules_ready = False


async def _ensure_tenant_rules() -> None:
    """Before the first event: the tenants' rules as they were at start-up, so an event is
    never skipped for a rule that existed before it (transient: the event is retried)."""
    global _rules_ready
    if _rules_ready:
        return
    _rules_view.start()
    try:
        await asyncio.wait_for(_rules_view.wait_ready(), READY_TIMEOUT_SECONDS)
    except TimeoutError as exc:
        raise ViewsNotReady(f"{_RULES_TOPIC} not read after {READY_TIMEOUT_SECONDS}s") from exc
    except Exception as exc:  # its consumer died (broker unreachable): a fresh one next time
        await _rules_view.stop()
        raise ViewsNotReady(f"{_RULES_TOPIC} cannot be read: {exc}") from exc
    _rules_ready = True


async def handle(event: EventT) -> None:
    await _ensure_tenant_rules()
    message = event.message
    logical = SOURCES[message.topic]
    try:
        value = json.loads(event.value) if event.value is not None else None
    except (ValueError, TypeError) as exc:
        await dead_letter(event, stage=STAGE, error=Rejected(f"not valid JSON: {exc}"))
        return
    matched = [rule for rule in rules_for(RULES, TENANT_RULES, logical) if matches(rule, value)]
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
        # Tenants' rules share one outcome label: their number is not bounded.
        metrics.processed(STAGE, f"triggered:{rule.name}" if rule in RULES else "triggered:tenant")


if SOURCES:
    _source = app.topic(
        *SOURCES, key_type=None, value_type=None, key_serializer="raw", value_serializer="raw"
    )

    @app.agent(_source, concurrency=1)
    async def trigger_notifications(stream: StreamT) -> None:
        async for event in stream.events():
            await guarded(STAGE, event, handle)
