"""Trigger rules: file validation, matching, path extraction, the request a rule builds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.catalog import TopicCatalog
from core.settings import Settings
from streams.triggers.rules import (
    MISSING,
    REPO,
    TriggerConfigError,
    TriggerError,
    build_request,
    extract,
    load_rules,
    matches,
    parse_rules,
    request_id,
)

CATALOG = TopicCatalog.load(Settings(topic_prefix="x."))

RULE: dict[str, Any] = {
    "name": "order-created",
    "topic": "orders.events",
    "when": {"type": "order.created", "meta.source": "shop"},
    "tenant": {"path": "tenant_id"},
    "template_id": "order-confirmation",
    "channels": ["email"],
    "recipient": {"user_id": "customer.id", "email": "customer.email"},
    "data": {"order_id": "id", "total": "total", "first_sku": "items.0.sku", "gone": "nope"},
    "idempotency_key": "event_id",
    "category": "transactional",
}

EVENT: dict[str, Any] = {
    "type": "order.created",
    "meta": {"source": "shop"},
    "event_id": "e-1",
    "tenant_id": "acme",
    "id": "o-42",
    "total": 19.5,
    "items": [{"sku": "A1"}, {"sku": "B2"}],
    "customer": {"id": 7, "email": "ada@example.test"},
}


def rule(**overrides: Any) -> Any:
    [parsed] = parse_rules({"rules": [{**RULE, **overrides}]}, CATALOG)
    return parsed


def test_extract_follows_dotted_paths_into_objects_and_lists() -> None:
    assert extract(EVENT, "customer.email") == "ada@example.test"
    assert extract(EVENT, "items.1.sku") == "B2"
    assert extract(EVENT, "items.5.sku") is MISSING
    assert extract(EVENT, "customer.name") is MISSING
    assert extract(EVENT, "total.x") is MISSING
    assert extract([1], "0") == 1


def test_every_when_path_must_equal() -> None:
    assert matches(rule(), EVENT)
    assert not matches(rule(), {**EVENT, "type": "order.cancelled"})
    assert not matches(rule(), {**EVENT, "meta": {}})
    assert not matches(rule(), [1, 2])
    assert matches(rule(when={}), {"anything": 1})


def test_a_matching_event_becomes_a_request() -> None:
    request = build_request(rule(), EVENT, topic="orders.events", partition=2, offset=9, now=5)
    assert request["request_id"] == request_id(rule(), "orders.events", 2, 9)
    assert request["tenant_id"] == "acme"
    assert request["recipients"] == [
        {
            "user_id": "7",
            "email": "ada@example.test",
            "phone": None,
            "locale": None,
            "timezone": None,
        }
    ]
    assert json.loads(request["data_json"]) == {
        "order_id": "o-42",
        "total": 19.5,
        "first_sku": "A1",
    }
    assert request["idempotency_key"] == "e-1"
    assert request["template_id"] == "order-confirmation" and request["category"] == "transactional"
    assert request["metadata"] == {"trigger": "order-created", "source": "orders.events/2/9"}


def test_request_ids_differ_per_rule_and_position() -> None:
    ids = {
        request_id(rule(), "orders.events", 0, 1),
        request_id(rule(), "orders.events", 0, 2),
        request_id(rule(), "orders.events", 1, 1),
        request_id(rule(name="other"), "orders.events", 0, 1),
    }
    assert len(ids) == 4


def test_a_fixed_tenant() -> None:
    request = build_request(
        rule(tenant={"value": "demo"}), EVENT, topic="t", partition=0, offset=0, now=0
    )
    assert request["tenant_id"] == "demo"


@pytest.mark.parametrize(
    ("event", "error"),
    [
        ({**EVENT, "customer": {"email": "x@y"}}, "recipient.user_id path 'customer.id'"),
        ({**EVENT, "customer": {"id": ""}}, "recipient.user_id path 'customer.id'"),
        ({**EVENT, "customer": {"id": {"nested": 1}}}, "not a single value"),
        ({k: v for k, v in EVENT.items() if k != "tenant_id"}, "tenant path 'tenant_id'"),
    ],
)
def test_an_event_without_recipient_or_tenant_is_an_error(event: Any, error: str) -> None:
    with pytest.raises(TriggerError, match=error):
        build_request(rule(), event, topic="t", partition=0, offset=0, now=0)


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"channels": ["pigeon"]}, "rule 'order-created', field channels: Value error, unknown"),
        ({"channels": []}, "rule 'order-created', field channels"),
        ({"tenant": {}}, "rule 'order-created', field tenant: Value error, give exactly one"),
        ({"recipient": {"email": "x"}}, "rule 'order-created', field recipient.user_id"),
        ({"template": "typo"}, "rule 'order-created', field template: Extra inputs"),
        ({"category": "spam"}, "rule 'order-created', field category"),
        ({"priority": "urgent"}, "rule 'order-created', field priority"),
        ({"topic": "nope.events"}, "rule 'order-created', field topic: 'nope.events' is not in"),
        ({"topic": "notifications.requests"}, "field topic: notifications.requests carries Avro"),
    ],
)
def test_invalid_rules_name_the_rule_and_field(override: dict[str, Any], error: str) -> None:
    with pytest.raises(TriggerConfigError) as info:
        parse_rules({"rules": [{**RULE, **override}]}, CATALOG)
    assert error in str(info.value)


def test_a_rule_without_name_is_named_by_position() -> None:
    nameless = {k: v for k, v in RULE.items() if k != "name"}
    with pytest.raises(TriggerConfigError, match=r"rule #2, field name: Field required"):
        parse_rules({"rules": [RULE, nameless]}, CATALOG)


def test_rule_names_are_unique() -> None:
    with pytest.raises(TriggerConfigError, match="rule 'order-created', field name: used twice"):
        parse_rules({"rules": [RULE, RULE]}, CATALOG)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(TriggerConfigError, match="cannot read"):
        load_rules(tmp_path / "absent.yaml", CATALOG)
    broken = tmp_path / "broken.yaml"
    broken.write_text("rules: [\n")
    with pytest.raises(TriggerConfigError, match="cannot read"):
        load_rules(broken, CATALOG)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_rules(empty, CATALOG) == []


def test_the_default_rules_file_is_valid() -> None:
    rules = load_rules(REPO / "streams/config/triggers.yaml", CATALOG)
    assert {(r.name, r.template_id) for r in rules} == {
        ("order-created", "order-confirmation"),
        ("payment-succeeded", "payment-receipt"),
    }
    seed = yaml.safe_load((REPO / "streams/config/seed.yaml").read_text())
    declared = {t["template_id"]: set(t.get("variables", [])) for t in seed.get("templates", [])}
    for r in rules:
        # Every variable the seeded template declares is mapped from the event.
        assert declared[r.template_id] <= set(r.data), r.name
