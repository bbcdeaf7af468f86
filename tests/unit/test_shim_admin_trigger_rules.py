"""Tenants' trigger rules (config.trigger-rules): validation, confinement to the tenant's own
events, and how the worker merges them with the rules file."""

from __future__ import annotations

import json
from typing import Any

import pytest

from streams.catalog import TopicCatalog
from streams.settings import Settings
from streams.trigger_rules import (
    TenantRuleError,
    TenantRules,
    TriggerConfigError,
    build_request,
    matches,
    parse_rules,
    rules_for,
    tenant_rule,
    upstream_topics,
)

CATALOG = TopicCatalog.load(Settings(topic_prefix="x."))

RULE: dict[str, Any] = {
    "topic": "orders.events",
    "when": {"type": "order.created"},
    "template_id": "order-confirmation",
    "channels": ["email"],
    "recipient": {"user_id": "customer.id"},
}
FILE_RULE = {**RULE, "name": "created", "tenant": {"path": "tenant_id"}}


def event(tenant: str, type_: str = "order.created") -> dict[str, Any]:
    return {"type": type_, "tenant_id": tenant, "customer": {"id": "u1"}}


def record(tenant: str, rule_id: str, rule: dict[str, Any], enabled: bool = True) -> dict[str, Any]:
    return {
        "tenant_id": tenant,
        "rule_id": rule_id,
        "rule_json": json.dumps(rule),
        "enabled": enabled,
        "updated_at": 1,
    }


def test_upstream_topics_are_the_json_topics_that_are_not_changelogs() -> None:
    assert upstream_topics(CATALOG) == ["orders.events"]
    changelog = {**FILE_RULE, "topic": "{app_id}-delivered-changelog"}
    with pytest.raises(TriggerConfigError, match=r"field topic: .* internal changelog"):
        parse_rules({"rules": [changelog]}, CATALOG)


def test_a_tenant_rule_is_named_by_its_id_and_reads_the_tenant_from_the_event() -> None:
    rule = tenant_rule("acme", "created", RULE, CATALOG)
    assert rule.name == "created"
    assert (rule.tenant.path, rule.tenant.value) == ("tenant_id", None)
    custom = tenant_rule("acme", "created", {**RULE, "tenant": {"path": "org.id"}}, CATALOG)
    assert custom.tenant.path == "org.id"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tenant": {"value": "acme"}}, "tenant.value"),
        ({"when": {"tenant_id": "globex"}}, "when.tenant_id"),
        ({"name": "else"}, "name"),
        ({"topic": "notifications.status"}, "topic"),
        ({"channels": ["pigeon"]}, "channels"),
        ({"recipient": {}}, "recipient.user_id"),
    ],
)
def test_tenant_rules_refuse_what_would_cross_tenants_or_cannot_run(
    change: dict[str, Any], field: str
) -> None:
    with pytest.raises(TenantRuleError) as info:
        tenant_rule("acme", "created", {**RULE, **change}, CATALOG)
    assert info.value.field == field


def test_the_worker_merges_file_rules_with_each_tenants_own() -> None:
    [file_rule] = parse_rules({"rules": [FILE_RULE]}, CATALOG)
    tenants = TenantRules(CATALOG)
    tenants.apply("acme:created", None, record("acme", "created", RULE))
    tenants.apply("globex:created", None, record("globex", "created", RULE))
    merged = rules_for([file_rule], tenants, "orders.events")
    assert [r.name for r in merged] == ["created", "acme:created", "globex:created"]
    assert rules_for([file_rule], tenants, "other.events") == []

    # The file's rule sees every tenant's events; a tenant's rule only its own.
    assert [r.name for r in merged if matches(r, event("acme"))] == ["created", "acme:created"]
    assert [r.name for r in merged if matches(r, event("initech"))] == ["created"]
    assert not any(matches(r, event("acme", "order.shipped")) for r in merged)

    # Same event, same rule name: distinct requests, each saying which rule made it.
    built = [
        build_request(r, event("acme"), topic="orders.events", partition=0, offset=7, now=1)
        for r in merged[:2]
    ]
    assert built[0]["request_id"] != built[1]["request_id"]
    assert [b["metadata"]["trigger"] for b in built] == ["created", "acme:created"]
    assert {b["tenant_id"] for b in built} == {"acme"}


def test_disabled_deleted_and_unusable_records_apply_no_rule() -> None:
    tenants = TenantRules(CATALOG)
    tenants.apply("acme:a", None, record("acme", "a", RULE))
    tenants.apply("acme:b", None, record("acme", "b", RULE))
    assert len(tenants.for_topic("orders.events")) == 2

    tenants.apply("acme:a", None, record("acme", "a", RULE, enabled=False))
    tenants.apply("acme:b", None, None)  # a tombstone
    assert tenants.for_topic("orders.events") == []

    tenants.apply("globex:x", None, record("acme", "x", RULE))  # key of another tenant
    tenants.apply("acme:y", None, {**record("acme", "y", RULE), "rule_json": "{not json"})
    fixed = record("acme", "z", {**RULE, "tenant": {"value": "acme"}})
    tenants.apply("acme:z", None, fixed)
    assert tenants.for_topic("orders.events") == []

    # A record replaced by a valid one applies again.
    tenants.apply("acme:z", fixed, record("acme", "z", RULE))
    assert [r.name for r in tenants.for_topic("orders.events")] == ["acme:z"]
