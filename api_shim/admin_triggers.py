"""Trigger rules: a tenant's own rules on `config.trigger-rules`, applied by the triggers stage.

The body is one rule of the rules file (streams.triggers.rules.Rule, docs/triggers.md),
validated by the same function the worker applies to the record (`tenant_rule`): the rule
reads its tenant from the topic's tenant field, which the operator sets in topics.yaml
(`tenant_field`, default `tenant_id`), and only ever matches that tenant's events.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, Request, Response

from api_shim import errors
from api_shim.admin_common import (
    FieldProblem,
    RuleIdPath,
    as_datetime,
    now_ms,
    tombstone,
    view,
    write,
)
from api_shim.admin_models import TriggerRuleIn, TriggerRuleOut
from api_shim.auth import Admin, Principal
from api_shim.errors import AUTHENTICATED, NotFound
from streams.triggers.rules import Rule, TenantRuleError, tenant_rule

router = APIRouter(tags=["admin"])

TOPIC = "config.trigger-rules"


def rule_out(record: dict[str, Any]) -> TriggerRuleOut:
    return TriggerRuleOut(
        rule_id=record["rule_id"],
        enabled=record["enabled"],
        rule=Rule.model_validate_json(record["rule_json"]),
        updated_at=as_datetime(record.get("updated_at") or None),
    )


def _own(request: Request, caller: Principal, rule_id: str) -> dict[str, Any]:
    record = view(request, TOPIC).get(f"{caller.tenant_id}:{rule_id}")
    if record is None:
        raise NotFound(f"no trigger rule {rule_id!r}")
    return record


@router.put(
    "/api/v1/admin/trigger-rules/{rule_id}",
    response_model=TriggerRuleOut,
    responses={
        201: {"model": TriggerRuleOut, "description": "Created."},
        **errors.responses(AUTHENTICATED, 403, 422, 503),
    },
    summary="Create or replace a trigger rule",
    description="One rule of the rules file (docs/triggers.md). `name` is the rule id. "
    "The rule matches only events whose tenant field holds your tenant id; the operator "
    "sets that field per topic (default `tenant_id`), so leave `tenant` out: another "
    "`tenant.path`, or a fixed `tenant.value`, is refused. "
    "`topic` must be an upstream JSON topic of topics.yaml. Workers apply the rule as soon "
    "as they read it, without a restart. 201 when created.",
)
async def put_rule(
    rule_id: RuleIdPath,
    body: TriggerRuleIn,
    request: Request,
    response: Response,
    caller: Admin,
) -> TriggerRuleOut:
    raw = body.model_dump(mode="json", exclude={"enabled"}, exclude_none=True)
    try:
        rule = tenant_rule(caller.tenant_id, rule_id, raw, request.app.state.topics)
    except TenantRuleError as exc:
        raise FieldProblem(exc.field, exc.problem) from None
    key = f"{caller.tenant_id}:{rule_id}"
    existing = view(request, TOPIC).get(key)
    record = {
        "tenant_id": caller.tenant_id,
        "rule_id": rule_id,
        "rule_json": json.dumps(rule.model_dump(mode="json"), separators=(",", ":")),
        "enabled": body.enabled,
        "updated_at": now_ms(),
    }
    await write(request, TOPIC, "TriggerRule", key, record)
    if existing is None:
        response.status_code = 201
    return rule_out(record)


@router.get(
    "/api/v1/admin/trigger-rules",
    response_model=list[TriggerRuleOut],
    responses=errors.responses(AUTHENTICATED, 403),
    summary="Your tenant's trigger rules",
)
async def list_rules(request: Request, caller: Admin) -> list[TriggerRuleOut]:
    found = view(request, TOPIC).items_with_prefix(f"{caller.tenant_id}:")
    return [rule_out(record) for _, record in sorted(found)]


@router.get(
    "/api/v1/admin/trigger-rules/{rule_id}",
    response_model=TriggerRuleOut,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422),
    summary="One trigger rule",
)
async def get_rule(rule_id: RuleIdPath, request: Request, caller: Admin) -> TriggerRuleOut:
    return rule_out(_own(request, caller, rule_id))


@router.delete(
    "/api/v1/admin/trigger-rules/{rule_id}",
    status_code=204,
    responses=errors.responses(AUTHENTICATED, 403, 404, 422, 503),
    summary="Delete a trigger rule",
    description="A tombstone: workers stop applying the rule as soon as they read it.",
)
async def delete_rule(rule_id: RuleIdPath, request: Request, caller: Admin) -> Response:
    _own(request, caller, rule_id)
    await tombstone(request, TOPIC, f"{caller.tenant_id}:{rule_id}")
    return Response(status_code=204)
