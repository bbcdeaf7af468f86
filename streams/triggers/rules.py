"""Trigger rules: the YAML file that maps upstream domain events to notification requests.

The file's model (pydantic; a bad file is an error naming the rule and field) and the pure
functions that match an event and build a NotificationRequest from it. Tenants' own rules
(config.trigger-rules, written by the admin API) use the same model, confined to their
tenant's events by the topic's operator-defined tenant field (`tenant_rule`, `confine`,
`TenantRules`). The agent that applies them is
streams.triggers.agents; the format is in docs/triggers.md.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.catalog import TopicCatalog
from schemas import SchemaCatalog
from streams.runtime.events import Rejected

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
_NAMESPACE = uuid.UUID("6d1f0a3e-5b52-4a0c-9a0e-2f3c8e1b7d44")
_SCHEMAS = SchemaCatalog.load()
CHANNELS = frozenset(_SCHEMAS.expanded("Channel")["symbols"])
CATEGORIES = frozenset(_SCHEMAS.expanded("Category")["symbols"])
PRIORITIES = frozenset(_SCHEMAS.expanded("Priority")["symbols"])


class TriggerConfigError(Exception):
    """The rules file is unreadable or invalid; the message names the rule and field."""


class TriggerError(Rejected):
    """An event a matching rule cannot turn into a request."""


# -- the rules file ---------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TenantSpec(_Strict):
    path: str | None = None
    value: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> TenantSpec:
        if (self.path is None) == (self.value is None):
            raise ValueError("give exactly one of path (a dotted path) or value (a tenant id)")
        return self


class RecipientSpec(_Strict):
    """Dotted paths into the event; user_id is required, the addresses are fallbacks."""

    user_id: str
    email: str | None = None
    phone: str | None = None
    locale: str | None = None
    timezone: str | None = None


class Rule(_Strict):
    name: str = Field(min_length=1)
    topic: str
    when: dict[str, Any] = Field(default_factory=dict)
    tenant: TenantSpec
    template_id: str = Field(min_length=1)
    # The enumerations are checked below (with the valid values in the error) and also
    # stated in the JSON Schema, so the shim's document says them.
    channels: list[str] = Field(
        min_length=1, json_schema_extra={"items": {"type": "string", "enum": sorted(CHANNELS)}}
    )
    recipient: RecipientSpec
    data: dict[str, str] = Field(default_factory=dict)
    idempotency_key: str | None = None
    category: str | None = Field(None, json_schema_extra={"enum": [*sorted(CATEGORIES), None]})
    priority: str = Field("normal", json_schema_extra={"enum": sorted(PRIORITIES)})

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, channels: list[str]) -> list[str]:
        unknown = [c for c in channels if c not in CHANNELS]
        if unknown:
            raise ValueError(f"unknown channel(s) {unknown}; valid: {sorted(CHANNELS)}")
        return channels

    @field_validator("category")
    @classmethod
    def _known_category(cls, category: str | None) -> str | None:
        if category is not None and category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}; valid: {sorted(CATEGORIES)}")
        return category

    @field_validator("priority")
    @classmethod
    def _known_priority(cls, priority: str) -> str:
        if priority not in PRIORITIES:
            raise ValueError(f"unknown priority {priority!r}; valid: {sorted(PRIORITIES)}")
        return priority


class RulesFile(_Strict):
    rules: list[Rule] = Field(default_factory=list)


def _describe(error: dict[str, Any], raw: Any) -> str:
    loc = list(error["loc"])
    if len(loc) >= 2 and loc[0] == "rules" and isinstance(loc[1], int):
        index = loc[1]
        entry = raw["rules"][index] if isinstance(raw, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        where = f"rule {name!r}" if name else f"rule #{index + 1}"
        field = ".".join(str(part) for part in loc[2:]) or "(the rule)"
        return f"{where}, field {field}: {error['msg']}"
    return f"{'.'.join(str(part) for part in loc) or '(file)'}: {error['msg']}"


def parse_rules(raw: Any, topic_catalog: TopicCatalog, source: str = "rules") -> list[Rule]:
    """Validate a rules document; raises TriggerConfigError naming the rule and field."""
    if raw is None:
        return []
    try:
        rules = RulesFile.model_validate(raw).rules
    except ValidationError as exc:
        problems = "; ".join(_describe(dict(error), raw) for error in exc.errors())
        raise TriggerConfigError(f"{source}: {problems}") from None
    seen: set[str] = set()
    for rule in rules:
        if rule.name in seen:
            raise TriggerConfigError(f"{source}: rule {rule.name!r}, field name: used twice")
        seen.add(rule.name)
        problem = upstream_problem(topic_catalog, rule.topic)
        if problem is not None:
            raise TriggerConfigError(f"{source}: rule {rule.name!r}, field topic: {problem}")
    return rules


def upstream_problem(topic_catalog: TopicCatalog, topic: str) -> str | None:
    """Why `topic` cannot be a rule's source, or None: it must be in topics.yaml and carry
    upstream JSON events (not Avro, not a worker's internal changelog)."""
    try:
        spec = topic_catalog[topic]
    except KeyError:
        return f"{topic!r} is not in topics.yaml"
    if spec.value_schema is not None:
        return f"{topic} carries Avro {spec.value_schema}, not upstream JSON events"
    if "{app_id}" in spec.name:
        return f"{topic} is a worker's internal changelog, not an upstream topic"
    return None


def upstream_topics(topic_catalog: TopicCatalog) -> list[str]:
    """Every topic a rule may read: the worker follows them all, so a tenant's rule created
    at run time applies without a restart."""
    return [s.name for s in topic_catalog if upstream_problem(topic_catalog, s.name) is None]


def resolve_path(configured: str) -> Path:
    path = Path(configured)
    if not path.is_absolute() and not path.exists():
        path = REPO / path  # the default is relative to the repository
    return path


def load_rules(path: str | Path, topic_catalog: TopicCatalog) -> list[Rule]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TriggerConfigError(f"{path}: cannot read the trigger rules: {exc}") from exc
    return parse_rules(raw, topic_catalog, str(path))


# -- pure rules -------------------------------------------------------------------------------

MISSING: Any = object()


def extract(value: Any, path: str) -> Any:
    """The value at a dotted path (`customer.id`, `items.0.sku`), or MISSING."""
    current = value
    for part in path.split("."):
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


def matches(rule: Rule, event: Any) -> bool:
    return all(extract(event, path) == expected for path, expected in rule.when.items())


def _text(rule: Rule, event: Any, path: str | None, field: str, required: bool) -> str | None:
    if path is None:
        return None
    found = extract(event, path)
    if found is MISSING or found is None or found == "":
        if required:
            raise TriggerError(f"rule {rule.name!r}: {field} path {path!r} is missing in the event")
        return None
    if isinstance(found, dict | list):
        raise TriggerError(f"rule {rule.name!r}: {field} path {path!r} is not a single value")
    return str(found)


def request_id(rule: Rule, topic: str, partition: int, offset: int) -> str:
    """Stable under replay: the same event and rule always make the same request."""
    return str(uuid.uuid5(_NAMESPACE, f"trigger:{rule.name}:{topic}:{partition}:{offset}"))


def build_request(
    rule: Rule, event: Any, *, topic: str, partition: int, offset: int, now: int
) -> dict[str, Any]:
    """The NotificationRequest a matching rule makes of an event; TriggerError if it cannot."""
    spec = rule.recipient
    recipient = {
        "user_id": _text(rule, event, spec.user_id, "recipient.user_id", True),
        "email": _text(rule, event, spec.email, "recipient.email", False),
        "phone": _text(rule, event, spec.phone, "recipient.phone", False),
        "locale": _text(rule, event, spec.locale, "recipient.locale", False),
        "timezone": _text(rule, event, spec.timezone, "recipient.timezone", False),
    }
    tenant = rule.tenant.value or _text(rule, event, rule.tenant.path, "tenant", True)
    data = {
        name: found
        for name, path in rule.data.items()
        if (found := extract(event, path)) is not MISSING
    }
    return {
        "request_id": request_id(rule, topic, partition, offset),
        "tenant_id": tenant,
        "idempotency_key": _text(rule, event, rule.idempotency_key, "idempotency_key", False),
        "batch_id": None,
        "occurred_at": now,
        "channels": list(rule.channels),
        "recipients": [recipient],
        "template_id": rule.template_id,
        "content": None,
        "data_json": json.dumps(data, default=str),
        "priority": rule.priority,
        "metadata": {"trigger": rule.name, "source": f"{topic}/{partition}/{offset}"},
        "category": rule.category,
        "template_version": None,
        "send_at": None,
    }


# -- tenants' rules (config.trigger-rules) ------------------------------------------------------


def tenant_field(topic_catalog: TopicCatalog, topic: str) -> str:
    """The path that names an event's tenant on `topic`: `tenant_field` in topics.yaml (the
    operator's, default `tenant_id`). Never the rule's: a tenant choosing it could point it
    at a field another tenant's events fill in (`note: acme`) and claim those events."""
    return topic_catalog[topic].tenant_field


class TenantRuleError(TriggerConfigError):
    """A tenant's rule that cannot be used; `field` is its dotted path in the rule."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


def tenant_rule(tenant_id: str, rule_id: str, raw: Any, topic_catalog: TopicCatalog) -> Rule:
    """A tenant's rule, validated: the file's model, named `rule_id`, with the tenant read from
    the topic's tenant field (`tenant_field`). `tenant` may be left out or name that field; a
    fixed tenant (`tenant.value`) or another path is refused: upstream topics are shared, so
    either would turn other tenants' events into this tenant's notifications. Raises
    TenantRuleError naming the field."""
    if not isinstance(raw, dict):
        raise TenantRuleError("(the rule)", "expected an object")
    if raw.get("name") not in (None, rule_id):
        raise TenantRuleError("name", f"must be the rule id {rule_id!r} (or left out)")
    given = raw.get("tenant")
    data = {**raw, "name": rule_id, "tenant": given or {"path": "tenant_id"}}
    try:
        rule = Rule.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = ".".join(str(part) for part in error["loc"]) or "(the rule)"
        raise TenantRuleError(field, str(error["msg"]).removeprefix("Value error, ")) from None
    if rule.tenant.path is None:
        raise TenantRuleError(
            "tenant.value",
            "a tenant's rule reads the tenant from the event, so it only ever matches that "
            "tenant's own events; a fixed tenant is for the operator's rules file",
        )
    problem = upstream_problem(topic_catalog, rule.topic)
    if problem is not None:
        raise TenantRuleError("topic", problem)
    path = tenant_field(topic_catalog, rule.topic)
    if given and rule.tenant.path != path:
        raise TenantRuleError(
            "tenant.path",
            f"the tenant of {rule.topic} events is read from {path!r}, set by the operator "
            "(topics.yaml tenant_field); leave tenant out",
        )
    if rule.when.get(path, tenant_id) != tenant_id:
        raise TenantRuleError(f"when.{path}", f"a tenant's rule only matches {tenant_id!r}")
    return rule.model_copy(update={"tenant": TenantSpec(path=path)})


def confine(rule: Rule, tenant_id: str, topic_catalog: TopicCatalog) -> Rule:
    """The tenant's rule as the worker runs it: it matches only events whose operator-defined
    tenant field (`tenant_field`, whatever the rule says) holds `tenant_id`, its requests are
    that tenant's, and it is named `tenant_id:rule_id` (its request ids and metadata.trigger)."""
    path = tenant_field(topic_catalog, rule.topic)
    return rule.model_copy(
        update={
            "name": f"{tenant_id}:{rule.name}",
            "when": {**rule.when, path: tenant_id},
            "tenant": TenantSpec(value=tenant_id),
        }
    )


class TenantRules:
    """The enabled rules of config.trigger-rules, kept up to date by a view listener.

    A record the worker cannot use (bad JSON, a key that is not its tenant_id:rule_id, a rule
    the admin API would refuse) is logged and ignored: the admin API validates before it
    writes, so only a hand-written record can be bad, and it must not stop the worker.
    """

    def __init__(self, topic_catalog: TopicCatalog) -> None:
        self._catalog = topic_catalog
        self._rules: dict[str, Rule] = {}

    def apply(self, key: str, _old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        self._rules.pop(key, None)
        if new is None or not new.get("enabled", True):
            return
        tenant_id, rule_id = new["tenant_id"], new["rule_id"]
        if key != f"{tenant_id}:{rule_id}":
            log.warning("trigger rule %r: key is not tenant_id:rule_id; ignored", key)
            return
        try:
            raw = json.loads(new["rule_json"])
            rule = tenant_rule(tenant_id, rule_id, raw, self._catalog)
            self._rules[key] = confine(rule, tenant_id, self._catalog)
        except (ValueError, TriggerConfigError) as exc:
            log.warning("trigger rule %r ignored: %s", key, exc)

    def for_topic(self, topic: str) -> list[Rule]:
        return [rule for _, rule in sorted(self._rules.items()) if rule.topic == topic]


def rules_for(file_rules: list[Rule], tenant_rules: TenantRules, topic: str) -> list[Rule]:
    """The rules that read `topic`: the file's, then the tenants'."""
    return [r for r in file_rules if r.topic == topic] + tenant_rules.for_topic(topic)
