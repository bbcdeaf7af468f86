"""Template resolution, locale and channel choice, declared variables, the sandbox, preview."""

from __future__ import annotations

from typing import Any

import pytest

from streams.content.templates import TemplateIndex, choose_content, locale_chain, preview


def template(version: int = 1, state: str = "published", **extra: Any) -> dict[str, Any]:
    return {
        "tenant_id": "acme",
        "template_id": "welcome",
        "version": version,
        "state": state,
        "default_locale": "en",
        "content": {
            "subject": f"v{version}",
            "text": f"Hello {{{{ name }}}} v{version}",
            "html": None,
        },
        "variants": [],
        "variables": [],
        **extra,
    }


def index_of(*records: dict[str, Any], legacy: bool = False) -> TemplateIndex:
    index = TemplateIndex()
    for record in records:
        key = "acme:welcome" if legacy else f"acme:welcome:{record['version']}"
        index.apply(key, None, record)
    return index


def test_latest_published_version_wins_and_drafts_are_ignored() -> None:
    index = index_of(template(1), template(2), template(3, state="draft"))
    assert index.resolve("acme", "welcome")["version"] == 2  # type: ignore[index]


def test_a_pinned_version_is_used_even_as_a_draft_but_never_archived() -> None:
    index = index_of(template(1), template(2, state="draft"), template(3, state="archived"))
    assert index.resolve("acme", "welcome", 2)["version"] == 2  # type: ignore[index]
    assert index.resolve("acme", "welcome", 1)["version"] == 1  # type: ignore[index]
    assert index.resolve("acme", "welcome", 3) is None
    assert index.resolve("acme", "welcome", 9) is None


def test_only_drafts_or_unknown_templates_resolve_to_nothing() -> None:
    assert index_of(template(1, state="draft")).resolve("acme", "welcome") is None
    assert index_of(template(1)).resolve("acme", "other") is None
    assert index_of(template(1)).resolve("globex", "welcome") is None


def test_a_tombstone_falls_back_to_the_previous_published_version() -> None:
    v1, v2 = template(1), template(2)
    index = index_of(v1, v2)
    index.apply("acme:welcome:2", v2, None)
    assert index.resolve("acme", "welcome")["version"] == 1  # type: ignore[index]
    index.apply("acme:welcome:1", v1, None)
    assert index.resolve("acme", "welcome") is None


def test_records_under_the_legacy_key_are_indexed_by_their_fields() -> None:
    index = index_of(template(1), legacy=True)
    assert index.resolve("acme", "welcome")["version"] == 1  # type: ignore[index]


def test_an_overwritten_version_is_replaced_and_a_changed_version_moves() -> None:
    index = TemplateIndex()
    old = template(1)
    index.apply("acme:welcome", None, old)
    new = template(2)  # same (legacy) key, new version
    index.apply("acme:welcome", old, new)
    assert set(index.versions("acme", "welcome")) == {2}


@pytest.mark.parametrize(
    ("requested", "tenant_default", "chain"),
    [
        ("pt-BR", None, ["pt-BR", "pt", "en"]),
        ("pt-BR", "de", ["pt-BR", "pt", "de", "en"]),
        ("pt_BR", "pt", ["pt-BR", "pt", "en"]),
        (None, "fr-CA", ["fr-CA", "fr", "en"]),
        ("en-GB", "en", ["en-GB", "en"]),
        (None, None, ["en"]),
    ],
)
def test_locale_fallback_chain(
    requested: str | None, tenant_default: str | None, chain: list[str]
) -> None:
    assert locale_chain(requested, tenant_default) == chain


def variant(locale: str | None, channel: str | None, text: str) -> dict[str, Any]:
    return {"locale": locale, "channel": channel, "content": {"subject": None, "text": text}}


LOCALISED = template(
    variants=[
        variant("pt", None, "pt any"),
        variant("pt", "sms", "pt sms"),
        variant(None, "sms", "base sms"),
        variant("de", None, "de any"),
    ]
)


@pytest.mark.parametrize(
    ("locale", "channel", "tenant_default", "text", "used"),
    [
        ("pt-BR", "sms", None, "pt sms", "pt"),  # (locale, channel) beats (locale, any)
        ("pt-BR", "email", None, "pt any", "pt"),
        ("pt", "push", "de", "pt any", "pt"),
        ("fr", "email", "de", "de any", "de"),  # the tenant's default locale
        ("fr", "sms", "de", "de any", "de"),  # a locale match beats a locale-less channel match
        ("fr", "sms", None, "base sms", "en"),  # then the template's default locale
        ("fr", "email", None, "Hello {{ name }} v1", "en"),  # then the base content
        (None, "email", None, "Hello {{ name }} v1", "en"),
    ],
)
def test_content_choice(
    locale: str | None, channel: str, tenant_default: str | None, text: str, used: str
) -> None:
    content, locale_used = choose_content(
        LOCALISED, locale=locale, channel=channel, tenant_default_locale=tenant_default
    )
    assert (content["text"], locale_used) == (text, used)


def test_base_content_in_another_default_locale_is_reached_through_the_chain() -> None:
    german = template(default_locale="de", variants=[variant("en", None, "english")])
    content, used = choose_content(
        german, locale="de-AT", channel="email", tenant_default_locale=None
    )
    assert (content["text"], used) == ("Hello {{ name }} v1", "de")
    content, used = choose_content(german, locale="fr", channel="email", tenant_default_locale=None)
    assert (content["text"], used) == ("english", "en")


def test_preview_renders_the_chosen_variant_and_reports_version_and_locale() -> None:
    result = preview(
        template(
            version=4,
            variables=["name"],
            variants=[
                {
                    "locale": "pt",
                    "channel": "email",
                    "content": {
                        "subject": "Olá {{ name }}",
                        "text": "t",
                        "html": "<b>{{ name }}</b>",
                    },
                }
            ],
        ),
        {"name": "<Ana>"},
        locale="pt-BR",
        channel="email",
        tenant_default_locale=None,
    )
    assert result.model_dump() == {
        "subject": "Olá <Ana>",
        "text": "t",
        "html": "<b>&lt;Ana&gt;</b>",
        "locale_used": "pt",
        "version": 4,
        "missing_variables": [],
        "error": None,
    }


def test_missing_declared_variables_are_all_named_before_rendering() -> None:
    result = preview(
        template(variables=["name", "order.id", "order.total"]),
        {"order": {"id": 7}},
        locale=None,
        channel="email",
        tenant_default_locale=None,
    )
    assert result.missing_variables == ["name", "order.total"]
    assert result.error == "missing template variables: name, order.total"
    assert result.text is None


def test_an_undeclared_missing_variable_is_still_an_error_not_an_empty_string() -> None:
    result = preview(template(), {}, locale=None, channel="email", tenant_default_locale=None)
    assert result.error is not None and "'name' is undefined" in result.error


@pytest.mark.parametrize(
    "source",
    [
        "{{ name.__class__.__mro__ }}",
        "{{ cycler.__init__.__globals__ }}",
        "{{ ''.__class__.__subclasses__() }}",
    ],
)
def test_the_sandbox_refuses_unsafe_attribute_access(source: str) -> None:
    unsafe = template(content={"subject": None, "text": source, "html": None})
    result = preview(
        unsafe, {"name": "x"}, locale=None, channel="email", tenant_default_locale=None
    )
    assert result.error is not None and "SecurityError" in result.error


def test_the_sandbox_is_immutable() -> None:
    unsafe = template(content={"subject": None, "text": "{{ items.append(1) }}", "html": None})
    result = preview(
        unsafe, {"items": []}, locale=None, channel="email", tenant_default_locale=None
    )
    assert result.error is not None and "SecurityError" in result.error
