"""Stage 3, render: Jinja2 in a sandbox; inline content or a template from the templates topic.

(enrich, in the same consumer) -> render -> route (streams.stages.route.route_step)
Templates come from streams.runtime.config_views (the templates topic, replicated on every worker);
choosing a version, locale and channel variant and checking declared variables is
streams.content.templates.
Status: rendered | failed (template missing, a declared variable missing, a broken template,
a template over its limits (streams.content.template_limits): not retriable, with the reason).

Render and route run as steps of the enrich consumer (`render_step`): the three share the
recipient key and so the partition, and the two topic hops between them were a fifth of
the messages a notification cost. The agent on notifications.enriched[.bulk] stays for
records written there before, or by a replay.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from faust.types import EventT

from core import tracing
from streams.content import templates
from streams.runtime import config_views, metrics
from streams.runtime.events import (
    decode_or_dead_letter,
    emit_status,
    outgoing_headers,
)
from streams.runtime.lane_agents import lane_agents
from streams.stages.route import route_step

STAGE = "render"


class RenderError(Exception):
    pass


def _context(notification: dict[str, Any]) -> dict[str, Any]:
    return {
        **json.loads(notification["data_json"]),
        "recipient": notification["recipient"],
        "locale": notification.get("locale"),
        "notification_id": notification["notification_id"],
    }


def _tenant_default_locale(tenant_id: str) -> str | None:
    tenant = config_views.tenants.get(tenant_id)
    return tenant.get("default_locale") if tenant else None


def _resolve(notification: dict[str, Any]) -> tuple[templates.Template | None, str | None]:
    """The template (None for inline content) and the tenant's default locale, read from the
    views. On the event loop: the views change there and are not for other threads."""
    template_id = notification.get("template_id")
    if not template_id:
        return None, None
    tenant_id = notification["tenant_id"]
    version = notification.get("template_version")
    template = templates.resolve(tenant_id, template_id, version)
    if template is None:
        raise RenderError(templates.describe_missing(tenant_id, template_id, version))
    return template, _tenant_default_locale(tenant_id)


def _render_resolved(
    notification: dict[str, Any], template: templates.Template | None, default_locale: str | None
) -> dict[str, Any]:
    """Pure: renders with what _resolve found (safe in a worker thread)."""
    context = _context(notification)
    if template is None:
        try:
            rendered = templates.render_content(notification["content"] or {}, context)
        except templates.TemplateRenderError as exc:
            raise RenderError(str(exc)) from exc
        return {**notification, "rendered": rendered}
    result = templates.render_template(
        template,
        context,
        locale=notification.get("locale"),
        channel=notification["channel"],
        tenant_default_locale=default_locale,
    )
    if result.error is not None:
        raise RenderError(
            f"template {notification['template_id']!r} v{result.version}: {result.error}"
        )
    return {
        **notification,
        "rendered": {"subject": result.subject, "text": result.text, "html": result.html},
        "template_version": result.version,
        "metadata": {**(notification.get("metadata") or {}), "rendered_locale": result.locale_used},
    }


def render_notification(notification: dict[str, Any]) -> dict[str, Any]:
    """The notification with `rendered` filled in (and, from a template, the version and the
    locale used stamped on it). RenderError says why it cannot be rendered."""
    return _render_resolved(notification, *_resolve(notification))


# Renders run here, never on the event loop: a template may take up to its time budget
# (TEMPLATE_RENDER_BUDGET_SECONDS), and the loop keeps serving every other agent and the
# group's heartbeats meanwhile. The agents run one message at a time per lane.
_renders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="render")
# The template stops itself at its budget (streams.content.template_limits); past this much more the
# message is failed anyway and the partition moves on.
_GRACE_SECONDS = 2.0


def _is_literal(content: dict[str, Any]) -> bool:
    """No Jinja delimiters ({{ }}, {% %}, {# #}) in any field: nothing to evaluate."""
    return not any(
        "{" in source for source in (content.get(f) for f in ("subject", "text", "html")) if source
    )


async def render_off_loop(notification: dict[str, Any]) -> dict[str, Any]:
    """render_notification in a render thread, bounded in time."""
    template, default_locale = _resolve(notification)
    if template is None and _is_literal(notification.get("content") or {}):
        # Text with no template syntax renders in time linear in its (capped) size: the
        # hand-over to a thread and back would cost more than the render.
        return _render_resolved(notification, None, None)
    job = asyncio.get_running_loop().run_in_executor(
        _renders, _render_resolved, notification, template, default_locale
    )
    budget = templates.default_limits().budget_seconds
    try:
        return await asyncio.wait_for(job, budget + _GRACE_SECONDS)
    except TimeoutError:
        raise RenderError(f"rendering took over {budget + _GRACE_SECONDS:g} s") from None


def render(notification: dict[str, Any]) -> dict[str, Any]:
    """Just the rendered content (subject, text, html)."""
    rendered: dict[str, Any] = render_notification(notification)["rendered"]
    return rendered


async def handle(event: EventT) -> None:
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    await render_step(notification, event.key, outgoing_headers(event))


async def render_step(notification: dict[str, Any], key: Any, headers: dict[str, bytes]) -> None:
    """Render, then route (same consumer, no topic in between)."""
    try:
        rendered = await render_off_loop(notification)
    except RenderError as exc:
        await emit_status(notification, "failed", stage=STAGE, headers=headers, reason=str(exc))
        metrics.processed(STAGE, "failed", notification["occurred_at"])
        return
    await emit_status(rendered, "rendered", stage=STAGE, headers=headers)
    metrics.processed(STAGE, "rendered", notification["occurred_at"])
    await route_step(rendered, key, tracing.child_headers(headers))


lane_agents("notifications.enriched", STAGE, handle, needs_views=True)
