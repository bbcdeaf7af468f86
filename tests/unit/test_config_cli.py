"""The configuration CLI's offline parts: kinds, validation errors naming the field, the seed
file (every record valid, every template renders with its declared variables)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from schemas import build_codec
from streams.config.__main__ import SEED_FILE, main
from streams.config.kinds import KINDS, SEED_SECTIONS, ConfigError, kind
from streams.config.records import comparable, load_file, normalise
from streams.content.templates import preview

CODEC = build_codec(None)


def test_each_kind_has_its_key() -> None:
    assert kind("template").key({"tenant_id": "a", "template_id": "w", "version": 3}) == "a:w:3"
    assert kind("preferences").key({"tenant_id": "a", "user_id": "u"}) == "a:u"
    assert kind("provider").key({"tenant_id": "a", "provider_id": "p"}) == "a:p"
    assert kind("tenant").key({"tenant_id": "a"}) == "a"


def test_an_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="valid: tenant, template, preferences"):
        kind("tenants")


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"tenant_id": "a", "content": {"text": "x"}}, "template Template.template_id: required"),
        (
            {"tenant_id": "a", "template_id": "w", "content": {"text": "x"}, "state": "live"},
            "Template.state",
        ),
        (
            {
                "tenant_id": "a",
                "template_id": "w",
                "content": {"text": "x"},
                "variants": [{"channel": "fax", "content": {}}],
            },
            r"Template.variants\[0\].channel",
        ),
    ],
)
def test_bad_records_name_the_field(record: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        normalise(CODEC, kind("template"), record, "f.yaml[0]")


def test_normalise_fills_defaults_and_comparison_ignores_updated_at() -> None:
    record = normalise(
        CODEC, kind("tenant"), {"tenant_id": "a", "default_locale": "pt"}, "f.yaml[0]"
    )
    assert record["timezone"] == "UTC" and record["updated_at"] > 0
    assert comparable(record) == comparable({**record, "updated_at": 1})
    assert comparable(record) != comparable({**record, "default_locale": "en"})


def test_unreadable_and_malformed_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_file(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid json"):
        load_file(bad)


def test_put_with_a_bad_record_exits_2_naming_the_field_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Validation happens before any connection: no broker is needed to see this error.
    path = tmp_path / "tpl.yaml"
    path.write_text(
        yaml.safe_dump([{"tenant_id": "a", "template_id": "w", "content": {"text": 5}}])
    )
    assert main(["put", "template", str(path)]) == 2
    assert "tpl.yaml[0]: template Template.content.text" in capsys.readouterr().err


def test_preview_from_a_file_prints_the_rendering(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "tpl.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "tenant_id": "a",
                "template_id": "w",
                "version": 2,
                "variables": ["name"],
                "content": {"subject": "Hi {{ name }}", "text": "x"},
                "variants": [
                    {"locale": "pt", "content": {"subject": "Olá {{ name }}", "text": "y"}}
                ],
            }
        )
    )
    argv = ["preview", "--file", str(path), "--locale", "pt-BR", "--tenant-locale", "en"]
    assert main([*argv, "--data", '{"name": "Ana"}']) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["subject"], shown["locale_used"], shown["version"]) == ("Olá Ana", "pt", 2)
    assert main([*argv, "--data", "{}"]) == 1
    assert json.loads(capsys.readouterr().out)["missing_variables"] == ["name"]


SEED = yaml.safe_load(SEED_FILE.read_text())
SAMPLE_DATA = {
    "name": "Ada",
    "reset_url": "https://x.test/r",
    "expires_minutes": 30,
    "order_id": "o-1",
    "total": "$3.00",
    "amount": "3.00",
    "currency": "EUR",
    "receipt_url": "https://x.test/receipt",
    "title": "Disk full",
    "message": "db-1 at 95%",
    "items": [{"title": "A commented"}, {"message": "B"}],
    "count": 2,
}


def test_the_seed_file_has_only_known_sections_and_valid_records() -> None:
    assert set(SEED) <= set(SEED_SECTIONS)
    for section, kind_name in SEED_SECTIONS.items():
        for i, record in enumerate(SEED.get(section) or []):
            normalise(CODEC, KINDS[kind_name], record, f"seed:{section}[{i}]")
    assert [t["tenant_id"] for t in SEED["tenants"]] == ["demo"]


def test_the_seed_has_the_essential_templates() -> None:
    ids = {t["template_id"] for t in SEED["templates"]}
    assert {
        "welcome",
        "password-reset",
        "order-confirmation",
        "payment-receipt",
        "system-alert",
        "activity-digest",
    } <= ids
    [alert] = [t for t in SEED["templates"] if t["template_id"] == "system-alert"]
    assert alert["critical_overrides_preferences"] and alert["category"] in ("system", "alert")


@pytest.mark.parametrize("channel", ["email", "sms", "push", "chat"])
@pytest.mark.parametrize("locale", [None, "pt-BR", "de"])
@pytest.mark.parametrize("template_id", [t["template_id"] for t in SEED["templates"]])
def test_every_seeded_template_renders_on_every_channel(
    template_id: str, locale: str | None, channel: str
) -> None:
    [raw] = [t for t in SEED["templates"] if t["template_id"] == template_id]
    record = normalise(CODEC, kind("template"), raw, template_id)
    result = preview(
        record, SAMPLE_DATA, locale=locale, channel=channel, tenant_default_locale="en"
    )
    assert result.error is None, result
    assert result.text


def test_the_digest_template_lists_its_items() -> None:
    [raw] = [t for t in SEED["templates"] if t["template_id"] == "activity-digest"]
    record = normalise(CODEC, kind("template"), raw, "activity-digest")
    result = preview(record, SAMPLE_DATA, locale=None, channel="email", tenant_default_locale=None)
    assert result.subject == "2 new updates"
    assert "- A commented" in (result.text or "") and "- B" in (result.text or "")
