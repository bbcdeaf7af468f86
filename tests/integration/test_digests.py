"""Digests on the real broker: requests whose template has a digest rule become one email.

Each test uses its own templates and recipient, so the windows never meet.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from tests.integration.conftest import now_ms
from tests.integration.test_preferences import preferences
from tests.integration.test_scheduling import (
    digest_messages,
    digest_rule,
    events,
    items_listed,
    notification,
    put_digest_templates,
    send_item,
)
from tests.support.pipeline import Pipeline, wait_materialised, wait_until
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration


def collected_into(pipeline: Pipeline, nid: str) -> str:
    deferred = events(pipeline, nid, "deferred")
    assert len({e["event_id"] for e in deferred}) == 1, "collected into more than one window"
    reason = deferred[0]["reason"]
    assert reason.startswith("collected into digest "), reason
    return str(reason.removeprefix("collected into digest "))


def assert_one_digest(
    pipeline: Pipeline, smtp: SmtpCapture, user: str, ids: list[str], digest_key: str
) -> Any:
    """Exactly one email for `user` listing every item once; every item `digested` by it."""
    pipeline.wait_for_status(ids, {"digested"}, timeout=180)
    wait_until(lambda: digest_messages(smtp, user), 60, f"the digest email to {user}")
    time.sleep(2)  # a second digest would arrive right behind
    [message] = digest_messages(smtp, user)
    assert message["Subject"] == f"{len(ids)} updates on {digest_key}"
    assert sorted(items_listed(message), key=int) == [str(i) for i in range(len(ids))]

    digest_ids = {collected_into(pipeline, nid) for nid in ids}
    assert len(digest_ids) == 1, f"items went into {len(digest_ids)} windows"
    [did] = digest_ids
    assert message["X-Notification-Id"] == did
    for nid in ids:
        [digested] = events(pipeline, nid, "digested")
        assert digested["reason"] == f"sent in digest notification {did}"
        assert not events(pipeline, nid, "sent"), "an item was sent on its own"
    pipeline.wait_for_status([did], {"sent"}, timeout=60)
    return message


def test_fixed_window_sends_one_email_listing_every_item(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    put_digest_templates(pipeline, "fixed-item", digest_rule("fixed-digest", window_seconds=6))
    time.sleep(1)  # the worker's template views read the topic in the background
    started = int(time.time() * 1000)
    ids = [send_item(pipeline, "dfixed", "fixed-item", i, "apollo") for i in range(3)]
    pipeline.flush()

    pipeline.wait_for_status(ids, {"deferred"}, timeout=60)
    until = {events(pipeline, nid, "deferred")[0]["deferred_until"] for nid in ids}
    assert len(until) == 1, "a fixed window's flush time does not move"
    assert not digest_messages(smtp, "dfixed")
    message = assert_one_digest(pipeline, smtp, "dfixed", ids, "fixed-item|email|apollo")
    assert message is not None
    assert int(time.time() * 1000) >= started + 6_000


def test_max_items_flushes_as_soon_as_the_window_is_full(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    rule = digest_rule("full-digest", window_seconds=3600, max_items=4)
    put_digest_templates(pipeline, "full-item", rule)
    time.sleep(1)
    ids = [send_item(pipeline, "dfull", "full-item", i, "p") for i in range(6)]
    pipeline.flush()

    # The first four fill a window long before its hour is up; the other two open the next.
    assert_one_digest(pipeline, smtp, "dfull", ids[:4], "full-item|email|p")
    pipeline.wait_for_status(ids[4:], {"deferred"}, timeout=60)
    assert not any(events(pipeline, nid, "digested") for nid in ids[4:])


def test_inactivity_window_flushes_after_the_last_item(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    rule = digest_rule("quiet-digest", mode="inactivity", window_seconds=5, max_window_seconds=60)
    put_digest_templates(pipeline, "quiet-item", rule)
    time.sleep(1)
    ids = [send_item(pipeline, "dquiet", "quiet-item", 0, "q")]
    pipeline.flush()
    pipeline.wait_for_status(ids, {"deferred"}, timeout=60)
    time.sleep(3)  # less than the window: the next item keeps it open
    ids.append(send_item(pipeline, "dquiet", "quiet-item", 1, "q"))
    pipeline.flush()
    pipeline.wait_for_status(ids, {"deferred"}, timeout=60)
    first, second = (events(pipeline, nid, "deferred")[0]["deferred_until"] for nid in ids)
    assert second >= first + 2_500, "inactivity: the flush moves with each item"

    assert_one_digest(pipeline, smtp, "dquiet", ids, "quiet-item|email|q")
    digest_sent = min(
        e["occurred_at"]
        for nid, evts in pipeline.statuses.items()
        for e in evts
        if e["status"] == "sent" and nid not in ids and e["recipient_id"] == "dquiet"
    )
    assert digest_sent >= second


def test_five_hundred_concurrent_items_make_exactly_one_digest(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    # The window must outlast the items' way to the digest stage (~3 s for 500 here), and
    # is the test's duration: 1,000 items in 30 s tested the same thing 18 s slower.
    total = 500
    put_digest_templates(pipeline, "bulk-item", digest_rule("bulk-digest", window_seconds=15))
    time.sleep(1)
    ids = [send_item(pipeline, "dbulk", "bulk-item", i, "big") for i in range(total)]
    pipeline.flush()

    message = assert_one_digest(pipeline, smtp, "dbulk", ids, "bulk-item|email|big")
    assert len(items_listed(message)) == total
    assert sum(len(events(pipeline, nid, "digested")) for nid in ids) == total


def test_data_of_the_digest_notification_is_what_the_template_received(
    pipeline: Pipeline,
) -> None:
    """The digest notification's data: every item's data in order, the count and the key."""
    records = [
        pipeline.codec.decode(m.value(), "Notification")
        for m in pipeline.read_topic("notifications.accepted")
    ]
    digests = [r for r in records if r["digest_id"] and r["recipient"]["user_id"] == "dfixed"]
    assert digests, "the fixed-window digest was not produced to notifications.accepted"
    data = json.loads(digests[0]["data_json"])
    assert data["count"] == 3 and data["digest_key"] == "fixed-item|email|apollo"
    assert [item["n"] for item in data["items"]] == [0, 1, 2]
    assert digests[0]["template_id"] == "fixed-digest"


def test_a_replayed_digest_command_is_collected_once(pipeline: Pipeline, smtp: SmtpCapture) -> None:
    """Commands straight to notifications.deferred: item A twice (a replay), then item B."""
    user = "dreplay"
    rule = digest_rule("replay-digest", window_seconds=3600, max_items=2)
    put_digest_templates(pipeline, "replay-item", rule)
    time.sleep(1)  # the worker's template views read the topic in the background
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    commands = []
    for n, nid in enumerate(ids):
        item = {**notification(user, nid), "data_json": json.dumps({"n": n})}
        commands.append(
            {
                "kind": "digest",
                "notification": item,
                "release_at": 0,
                "reason": None,
                "digest_key": "replay",
                "digest_rule": rule,
                "issued_at": now_ms(),
            }
        )
    for record in (commands[0], commands[0], commands[1]):
        pipeline.produce_record("notifications.deferred", f"acme:{user}", record)
    pipeline.flush()

    # Collected twice, A would fill the window alone and B would wait in the next one.
    assert_one_digest(pipeline, smtp, user, ids, "replay")


def test_items_whose_template_the_recipient_turned_off_while_held_are_not_sent_in_a_digest(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """Preferences are read again, item by item, when a window flushes (issue 19, item 6).

    The digest's own notification has the rule's template, not the items': enrich checking
    it cannot see that the recipient turned the items' template off while they waited.
    Each item ends `suppressed` with enrich's reason, and no digest is sent.
    """
    user = "dtoggle"
    put_digest_templates(pipeline, "toggle-item", digest_rule("toggle-digest", window_seconds=15))
    time.sleep(1)
    ids = [send_item(pipeline, user, "toggle-item", i, "t") for i in range(2)]
    pipeline.flush()
    pipeline.wait_for_status(ids, {"deferred"}, timeout=60)
    flush_at = events(pipeline, ids[0], "deferred")[0]["deferred_until"]

    pipeline.produce_record(
        "users.preferences",
        f"acme:{user}",
        preferences("acme", user, templates={"toggle-item": {"enabled": False, "channels": {}}}),
    )
    wait_materialised(pipeline, "users.preferences")
    assert now_ms() < flush_at, "the preferences arrived after the window flushed"

    pipeline.wait_for_status(ids, {"suppressed"}, timeout=90)
    for nid in ids:
        [suppressed] = events(pipeline, nid, "suppressed")
        assert suppressed["reason"] == "recipient disabled template toggle-item"
        assert not events(pipeline, nid, "digested")
    time.sleep(3)
    assert not digest_messages(smtp, user)
