"""Templates and configuration as events, end to end: the config CLI writes the compacted
topics, a real worker renders from them, a real SMTP server receives the result."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.pipeline import REPO, Pipeline
from tests.support.requests import produce_request, request_record
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

# The worker's replicated views follow the config topics in the background, with no ordering
# against the request topics: the seed gets this long to arrive; later changes are retried.
CONFIG_SETTLE_SECONDS = 3.0


def cli(pipeline: Pipeline, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m streams.config ...` as an operator would run it, against this pipeline."""
    return subprocess.run(
        [sys.executable, "-m", "streams.config", *args],
        env=pipeline.env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def cli_ok(pipeline: Pipeline, *args: str) -> str:
    done = cli(pipeline, *args)
    assert done.returncode == 0, f"{args}: rc={done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


def put(pipeline: Pipeline, tmp_path: Path, kind: str, records: Any) -> str:
    path = tmp_path / f"{kind}-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(records, allow_unicode=True))
    return cli_ok(pipeline, "put", kind, str(path))


def totals(output: str) -> tuple[int, int]:
    [line] = [line for line in output.splitlines() if line.startswith("total:")]
    written, unchanged = (int(part.split()[0]) for part in line[len("total: ") :].split(", "))
    return written, unchanged


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, fresh_database: str, smtp: SmtpCapture, log_dir: Path
) -> Iterator[Pipeline]:
    """The pipeline with private targets allowed: the seed's SMTP provider is 127.0.0.1, the
    capture `make run` starts (the egress guard refuses it otherwise, as it should)."""
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        extra_env={"WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"},
    )
    pipe.start(shim=True)
    try:
        yield pipe
    finally:
        pipe.stop()


@pytest.fixture(scope="module")
def seeded(pipeline: Pipeline) -> Pipeline:
    first = totals(cli_ok(pipeline, "seed"))
    second = totals(cli_ok(pipeline, "seed"))
    assert first[0] >= 8 and first[1] == 0, first  # tenant, provider, six templates
    assert second == (0, first[0]), second  # idempotent: nothing differs the second time
    time.sleep(CONFIG_SETTLE_SECONDS)
    return pipeline


def send(
    pipeline: Pipeline,
    tenant: str,
    template_id: str,
    data: dict[str, Any],
    *,
    locale: str | None = None,
    version: int | None = None,
) -> str:
    """Produce a templated email request for a fresh user; its notification id."""
    record = request_record(
        f"u{uuid.uuid4().hex[:8]}",
        tenant=tenant,
        content=None,
        data=data,
        recipient={"locale": locale},
        template_id=template_id,
        template_version=version,
    )
    nid = produce_request(pipeline, record)
    pipeline.flush()
    return nid


def delivered(pipeline: Pipeline, smtp: SmtpCapture, nid: str) -> EmailMessage:
    pipeline.wait_for_status([nid], {"sent"})
    [message] = smtp.by_notification_id()[nid]
    return message


def subject_once_config_arrived(
    pipeline: Pipeline, smtp: SmtpCapture, attempt: Callable[[], str], expected: str
) -> str:
    """Send (attempt() returns a notification id) until the email's subject is `expected`;
    the notification id. The config topics and the request topics are not ordered against each
    other, so a request racing a config change may still see the old state: retry, bounded."""
    deadline = time.monotonic() + 90
    seen = []
    while time.monotonic() < deadline:
        nid = attempt()
        pipeline.wait_for_status([nid], {"sent", "failed"})
        if "sent" in pipeline.latest(nid):
            [message] = smtp.by_notification_id()[nid]
            if message["Subject"] == expected:
                return nid
            seen.append(message["Subject"])
        else:
            seen.append(f"failed: {pipeline.statuses[nid][-1]['reason']}")
        time.sleep(1)
    raise AssertionError(f"never rendered {expected!r}; got {seen}")


def rendered(pipeline: Pipeline, nid: str) -> dict[str, Any]:
    """The notification as the render stage passed it on (version and locale stamped), read
    from its delivery topic (route adds nothing)."""
    for message in pipeline.read_topic("notifications.deliver.email"):
        record = pipeline.codec.decode(message.value(), "Notification")
        if record["notification_id"] == nid:
            return record
    raise AssertionError(f"{nid} is not on notifications.deliver.email")


def test_a_seeded_template_renders_subject_text_and_html(
    seeded: Pipeline, smtp: SmtpCapture
) -> None:
    nid = send(
        seeded, "demo", "order-confirmation", {"name": "Ada", "order_id": "o-7", "total": "$9"}
    )
    message = delivered(seeded, smtp, nid)
    assert message["Subject"] == "Order o-7 confirmed"
    assert "Your order o-7 ($9) is confirmed." in message.get_body(("plain",)).get_content()
    assert "<b>o-7</b>" in message.get_body(("html",)).get_content()
    record = rendered(seeded, nid)
    assert record["template_version"] == 1
    assert record["metadata"]["rendered_locale"] == "en"


def test_a_pt_br_recipient_gets_the_pt_variant(seeded: Pipeline, smtp: SmtpCapture) -> None:
    nid = send(seeded, "demo", "welcome", {"name": "Ana"}, locale="pt-BR")
    assert delivered(seeded, smtp, nid)["Subject"] == "Bem-vindo, Ana"
    assert rendered(seeded, nid)["metadata"]["rendered_locale"] == "pt"


def test_a_missing_variable_fails_with_a_reason_naming_it(seeded: Pipeline) -> None:
    nid = send(seeded, "demo", "password-reset", {"name": "Ada"})
    seeded.wait_for_status([nid], {"failed"})
    [failed] = [e for e in seeded.statuses[nid] if e["status"] == "failed"]
    assert "reset_url" in failed["reason"] and "expires_minutes" in failed["reason"]
    assert failed["retriable"] is False
    assert "sent" not in seeded.latest(nid)


def version(number: int, state: str = "published") -> dict[str, Any]:
    return {
        "tenant_id": "demo",
        "template_id": "notice",
        "version": number,
        "state": state,
        "variables": ["name"],
        "content": {"subject": f"Notice v{number} for {{{{ name }}}}", "text": "t"},
    }


def test_pinned_version_latest_published_and_a_newer_draft(
    seeded: Pipeline, smtp: SmtpCapture, tmp_path: Path
) -> None:
    written = put(seeded, tmp_path, "template", [version(1), version(2), version(3, "draft")])
    assert totals(written) == (3, 0)
    latest = subject_once_config_arrived(
        seeded, smtp, lambda: send(seeded, "demo", "notice", {"name": "Ada"}), "Notice v2 for Ada"
    )  # not the newer draft
    pinned_old = send(seeded, "demo", "notice", {"name": "Ada"}, version=1)
    pinned_draft = send(seeded, "demo", "notice", {"name": "Ada"}, version=3)
    assert delivered(seeded, smtp, pinned_old)["Subject"] == "Notice v1 for Ada"
    assert delivered(seeded, smtp, pinned_draft)["Subject"] == "Notice v3 for Ada"
    assert rendered(seeded, latest)["template_version"] == 2

    # A tombstone of v2 falls back to the previous published version.
    assert "1 tombstone" in cli_ok(seeded, "delete", "template", "demo:notice:2")
    subject_once_config_arrived(
        seeded, smtp, lambda: send(seeded, "demo", "notice", {"name": "Ada"}), "Notice v1 for Ada"
    )


def test_the_tenant_default_locale_is_used_when_the_user_locale_has_no_variant(
    seeded: Pipeline, smtp: SmtpCapture, tmp_path: Path
) -> None:
    put(seeded, tmp_path, "tenant", {"tenant_id": "globex", "default_locale": "de"})
    put(
        seeded,
        tmp_path,
        "template",
        {
            "tenant_id": "globex",
            "template_id": "hello",
            "version": 1,
            "content": {"subject": "Hello {{ name }}", "text": "t"},
            "variants": [
                {"locale": "de", "content": {"subject": "Hallo {{ name }}", "text": "t"}},
                {"locale": "fr-CA", "content": {"subject": "Allô {{ name }}", "text": "t"}},
            ],
        },
    )
    french = subject_once_config_arrived(
        seeded,
        smtp,
        lambda: send(seeded, "globex", "hello", {"name": "Jo"}, locale="fr"),
        "Hallo Jo",
    )
    assert rendered(seeded, french)["metadata"]["rendered_locale"] == "de"


def test_the_cli_rejects_bad_input_naming_the_field(seeded: Pipeline, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        yaml.safe_dump({"tenant_id": "demo", "template_id": "x", "content": {}, "state": "live"})
    )
    done = cli(seeded, "put", "template", str(path))
    assert done.returncode == 2
    assert "Template.state" in done.stderr


def test_preview_reads_the_template_from_the_topic(seeded: Pipeline) -> None:
    out = cli_ok(
        seeded,
        "preview",
        "--tenant",
        "demo",
        "--template",
        "welcome",
        "--channel",
        "sms",
        "--locale",
        "pt-BR",
        "--data",
        '{"name": "Ana"}',
    )
    shown = json.loads(out)
    assert (shown["text"], shown["locale_used"], shown["version"]) == ("Bem-vindo, Ana!", "pt", 1)
