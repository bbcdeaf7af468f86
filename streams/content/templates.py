"""Template lookups: which version of a template a notification uses.

The templates topic is compacted and keyed `tenant_id:template_id:version`; every worker holds
all of it (streams.runtime.config_views.templates). This module keeps an index of that view by the
record's own fields (tenant_id, template_id, version), not by the key, so records written
under the legacy key `tenant_id:template_id` resolve too. A tombstone removes the version its
key held.

Resolution: a pinned version is used in any state but archived; otherwise the highest
published version. Drafts are only ever reached by pinning.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from pydantic import BaseModel

from streams.content.template_limits import (
    Budget,
    LimitedEnvironment,
    Limits,
    TemplateLimitError,
    running,
)

Template = dict[str, Any]
_Name = tuple[str, str]  # (tenant_id, template_id)


class TemplateIndex:
    """(tenant_id, template_id) -> version -> record, maintained from view changes."""

    def __init__(self) -> None:
        # Each version remembers which keys hold it: two keys (legacy and versioned) may
        # carry the same version, and a tombstone of one must not hide the other.
        self._versions: dict[_Name, dict[int, dict[str, Template]]] = {}

    def apply(self, key: str, old: Template | None, new: Template | None) -> None:
        if old is not None:
            self._remove(key, old)
        if new is not None:
            name = (new["tenant_id"], new["template_id"])
            self._versions.setdefault(name, {}).setdefault(int(new["version"]), {})[key] = new

    def _remove(self, key: str, record: Template) -> None:
        name = (record["tenant_id"], record["template_id"])
        versions = self._versions.get(name, {})
        holders = versions.get(int(record["version"]), {})
        holders.pop(key, None)
        if not holders:
            versions.pop(int(record["version"]), None)
        if not versions:
            self._versions.pop(name, None)

    def versions(self, tenant_id: str, template_id: str) -> dict[int, Template]:
        """Every known version (any state), the most recently written record per version."""
        held = self._versions.get((tenant_id, template_id), {})
        return {v: list(holders.values())[-1] for v, holders in held.items() if holders}

    def resolve(
        self, tenant_id: str, template_id: str, version: int | None = None
    ) -> Template | None:
        versions = self.versions(tenant_id, template_id)
        if version is not None:
            pinned = versions.get(version)
            if pinned is None or pinned.get("state") == "archived":
                return None
            return pinned
        published = [v for v, t in versions.items() if t.get("state", "published") == "published"]
        return versions[max(published)] if published else None


_index = TemplateIndex()
_attached = False


def _attach() -> None:
    """Index the shared templates view (once per process; replays what it already holds)."""
    global _attached
    if not _attached:
        from streams.runtime import (
            config_views,  # the worker's view; imported late for pure callers
        )

        config_views.templates.add_listener(_index.apply)
        _attached = True


def resolve(tenant_id: str, template_id: str, version: int | None = None) -> Template | None:
    """The Template record: the pinned version (any state but archived), else the highest
    published one."""
    _attach()
    return _index.resolve(tenant_id, template_id, version)


def describe_missing(tenant_id: str, template_id: str, version: int | None) -> str:
    """Why resolve() found nothing, for a `failed` status reason."""
    _attach()
    versions = _index.versions(tenant_id, template_id)
    if not versions:
        return f"template {template_id!r} not found for tenant {tenant_id}"
    if version is None:
        return f"template {template_id!r} has no published version for tenant {tenant_id}"
    if version in versions:
        return f"template {template_id!r} version {version} is archived"
    known = ", ".join(str(v) for v in sorted(versions))
    return f"template {template_id!r} has no version {version} (known: {known})"


# --- Choosing content: locale fallback and channel variants ------------------------------

FALLBACK_LOCALE = "en"


def locale_chain(requested: str | None, tenant_default: str | None) -> list[str]:
    """Locales to try, most specific first: pt-BR -> pt -> tenant default -> en (no repeats)."""
    chain: list[str] = []
    for tag in (requested, tenant_default, FALLBACK_LOCALE):
        if not tag:
            continue
        parts = tag.replace("_", "-").split("-")
        for n in range(len(parts), 0, -1):
            candidate = "-".join(parts[:n])
            if candidate.lower() not in (c.lower() for c in chain):
                chain.append(candidate)
    return chain


def _same(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.lower() == b.lower()


def choose_content(
    template: Template, *, locale: str | None, channel: str, tenant_default_locale: str | None
) -> tuple[dict[str, Any], str]:
    """The content to render and the locale it is in.

    At each locale of the chain: a variant for (locale, channel), then (locale, any channel).
    Locale-less variants and the base `content` are in the template's default_locale, so they
    are tried when the chain reaches it, and last of all.
    """
    variants = template.get("variants") or []
    base_locale = template.get("default_locale") or FALLBACK_LOCALE

    def base() -> dict[str, Any] | None:
        for wanted_channel in (channel, None):
            for variant in variants:
                if variant.get("locale") is None and variant.get("channel") == wanted_channel:
                    return dict(variant["content"])
        return None

    for candidate in locale_chain(locale, tenant_default_locale):
        for wanted_channel in (channel, None):
            for variant in variants:
                if _same(variant.get("locale"), candidate) and variant.get("channel") == (
                    wanted_channel
                ):
                    return dict(variant["content"]), variant["locale"]
        if _same(candidate, base_locale):
            return base() or dict(template["content"]), base_locale
    return base() or dict(template["content"]), base_locale


# --- Variables and rendering ------------------------------------------------------------


def missing_variables(declared: list[str], context: dict[str, Any]) -> list[str]:
    """Declared variables (dotted paths: order.id) the context does not provide."""
    missing = []
    for path in declared:
        value: Any = context
        for part in path.split("."):
            if isinstance(value, dict) and part in value:
                value = value[part]
            else:
                missing.append(path)
                break
    return missing


class TemplateRenderError(Exception):
    """The template cannot produce a message (missing variables, a broken or unsafe template).
    Never retriable: the same input fails the same way."""


# Sandboxed: templates come from tenants and must not reach Python internals, and bounded
# (streams.content.template_limits): no operation, loop or output beyond the limits.
# StrictUndefined: a missing variable is an error, never an empty string in a sent message.
_text_env = LimitedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
_html_env = LimitedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)


@lru_cache(maxsize=2048)
def _compile(source: str, html: bool) -> jinja2.Template:
    return (_html_env if html else _text_env).from_string(source)


@lru_cache(maxsize=1)
def default_limits() -> Limits:
    """The limits of this process's settings (TEMPLATE_MAX_OUTPUT_CHARS, ...)."""
    from core.settings import get_settings  # late: pure callers need no environment

    settings = get_settings()
    return Limits(
        max_output_chars=settings.template_max_output_chars,
        budget_seconds=settings.template_render_budget_seconds,
    )


def _render_field(source: str, html: bool, context: dict[str, Any], budget: Budget) -> str:
    """One source, its output counted chunk by chunk against what is left of the cap."""
    template = _compile(source, html)
    room = budget.limits.max_output_chars - budget.output
    parts: list[str] = []
    for chunk in template.root_render_func(template.new_context(context)):
        budget.tick()
        room -= len(chunk)
        if room < 0:
            raise TemplateLimitError(
                f"rendered content is over {budget.limits.max_output_chars} characters"
            )
        parts.append(chunk)
    text = "".join(parts)
    budget.output += len(text)
    return text


def render_content(
    content: dict[str, Any], context: dict[str, Any], limits: Limits | None = None
) -> dict[str, str | None]:
    """Render subject, text and html with the sandbox; TemplateRenderError on any failure.

    Bounded by `limits` (default: the settings'): at most max_output_chars for all fields
    together, at most budget_seconds of work, compiling included.
    """
    out: dict[str, str | None] = {}
    try:
        with running(limits or default_limits()) as budget:
            for field in ("subject", "text", "html"):
                source = content.get(field)
                out[field] = (
                    None
                    if source is None
                    else _render_field(source, field == "html", context, budget)
                )
    except jinja2.TemplateError as exc:  # SecurityError (limits too), UndefinedError, syntax
        raise TemplateRenderError(f"{type(exc).__name__}: {exc}") from exc
    except Exception as exc:  # whatever a template raises is its own fault
        # (ZeroDivisionError, OverflowError, RecursionError, MemoryError, int too long to print)
        raise TemplateRenderError(f"{type(exc).__name__}: {exc}") from exc
    if out["text"] is None and out["html"] is None:
        raise TemplateRenderError("content has neither text nor html")
    return out


class Preview(BaseModel):
    """What a template renders to for some data, without sending anything."""

    subject: str | None = None
    text: str | None = None
    html: str | None = None
    locale_used: str | None = None
    version: int | None = None
    missing_variables: list[str] = []
    error: str | None = None


def render_template(
    template: Template,
    context: dict[str, Any],
    *,
    locale: str | None,
    channel: str,
    tenant_default_locale: str | None,
) -> Preview:
    """Choose the content, check the declared variables, render. Errors go into the result."""
    content, locale_used = choose_content(
        template, locale=locale, channel=channel, tenant_default_locale=tenant_default_locale
    )
    result = Preview(locale_used=locale_used, version=template.get("version"))
    missing = missing_variables(list(template.get("variables") or []), context)
    if missing:
        result.missing_variables = missing
        result.error = f"missing template variables: {', '.join(missing)}"
        return result
    try:
        rendered = render_content(content, context)
    except TemplateRenderError as exc:
        result.error = str(exc)
        return result
    return result.model_copy(update=rendered)


def preview(
    template: Template,
    data: dict[str, Any],
    *,
    locale: str | None,
    channel: str,
    tenant_default_locale: str | None,
) -> Preview:
    """Render a template for `data` as the render stage would, without sending.

    `data` is the request data; `locale` is also exposed to the template as the stage does.
    """
    context = {"locale": locale, **data}
    return render_template(
        template,
        context,
        locale=locale,
        channel=channel,
        tenant_default_locale=tenant_default_locale,
    )
