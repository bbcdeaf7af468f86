"""Tenants' trigger rules (config.trigger-rules): validation, confinement to the tenant's own
events (by the tenant field the operator sets per topic), and how the worker merges them with
the rules file."""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.catalog import TopicCatalog
from core.settings import Settings
from streams.triggers.rules import (
    Rule,
    TenantRuleError,
    TenantRules,
    TriggerConfigError,
    build_request,
    confine,
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


def with_tenant_field(field: str) -> TopicCatalog:
    """The catalogue with the operator's tenant field of orders.events set to `field`."""
    return TopicCatalog(
        [
            spec.model_copy(update={"tenant_field": field})
            if spec.name == "orders.events"
            else spec
            for spec in CATALOG
        ]
    )


def test_a_tenant_rule_is_named_by_its_id_and_reads_the_tenant_from_the_topics_field() -> None:
    rule = tenant_rule("acme", "created", RULE, CATALOG)
    assert rule.name == "created"
    assert (rule.tenant.path, rule.tenant.value) == ("tenant_id", None)
    same = tenant_rule("acme", "created", {**RULE, "tenant": {"path": "tenant_id"}}, CATALOG)
    assert same.tenant.path == "tenant_id"
    # The operator's field for the topic, not a default the tenant could change.
    operators = tenant_rule("acme", "created", RULE, with_tenant_field("org.tenant"))
    assert operators.tenant.path == "org.tenant"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tenant": {"value": "acme"}}, "tenant.value"),
        ({"tenant": {"path": "note"}}, "tenant.path"),  # a path the tenant picked
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


def test_confine_matches_only_the_operators_tenant_field() -> None:
    # A rule naming its own tenant path (a record written before the fix, or by hand).
    chosen = Rule.model_validate({**RULE, "name": "created", "tenant": {"path": "note"}})
    rule = confine(chosen, "acme", CATALOG)
    globex = {**event("globex"), "note": "acme"}
    assert not matches(rule, globex)
    assert matches(rule, {**event("acme"), "note": "anything"})
    built = build_request(rule, event("acme"), topic="orders.events", partition=0, offset=0, now=1)
    assert built["tenant_id"] == "acme"

    # Another topic field set by the operator: only it decides whose event it is.
    catalog = with_tenant_field("org.tenant")
    rule = confine(tenant_rule("acme", "created", RULE, catalog), "acme", catalog)
    assert matches(rule, {**event("globex"), "org": {"tenant": "acme"}})
    assert not matches(rule, {**event("acme"), "org": {"tenant": "globex"}})
    with pytest.raises(TenantRuleError) as info:
        tenant_rule("acme", "created", {**RULE, "when": {"org.tenant": "globex"}}, catalog)
    assert info.value.field == "when.org.tenant"


def test_a_record_with_a_tenant_chosen_path_never_sees_another_tenants_events() -> None:
    tenants = TenantRules(CATALOG)
    tenants.apply("acme:noted", None, record("acme", "noted", {**RULE, "tenant": {"path": "note"}}))
    globex = {**event("globex"), "note": "acme"}
    assert [r for r in tenants.for_topic("orders.events") if matches(r, globex)] == []


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
