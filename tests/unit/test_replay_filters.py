"""The dead-letter replay's offline parts: time parsing, each filter and their combinations over
decoded DeadLetter records, the listing line, and arguments refused with exit code 2."""

from __future__ import annotations

import argparse
from typing import Any

import pytest

from core.catalog import TopicCatalog
from core.settings import Settings
from streams.replay import Selection, describe, parse_args, parse_time

SETTINGS = Settings(topic_prefix="p.")
CATALOG = TopicCatalog.load(SETTINGS)
MAY_1 = 1_714_521_600_000  # 2024-05-01T00:00:00Z


def letter(**fields: Any) -> dict[str, Any]:
    """A decoded DeadLetter record; `fields` override."""
    return {
        "stage": "request",
        "source_topic": "p.notifications.requests",
        "source_partition": 1,
        "source_offset": 7,
        "key": b"acme:ada",
        "value": b"\xc3\x01original",
        "error_type": "SchemaMismatchError",
        "error": "writer schema Tenant is not NotificationRequest",
        "tenant_id": "acme",
        "notification_id": "n-1",
        "failed_at": MAY_1,
        **fields,
    }


def selects(
    selection: Selection, record: dict[str, Any], partition: int = 0, offset: int = 0
) -> bool:
    return selection.matches(partition, offset, record)


# -- time ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1714521600000", MAY_1),
        (" 1714521600000 ", MAY_1),
        ("2024-05-01T00:00:00Z", MAY_1),
        ("2024-05-01T00:00:00+00:00", MAY_1),
        ("2024-05-01T02:00:00+02:00", MAY_1),
        ("2024-05-01T00:00:00", MAY_1),  # no offset: UTC
        ("2024-05-01", MAY_1),
        ("2024-05-01T00:00:00.123Z", MAY_1 + 123),  # exact, no float rounding
        ("2024-05-01 00:00:01", MAY_1 + 1000),
    ],
)
def test_times_are_iso_8601_or_epoch_milliseconds(text: str, expected: int) -> None:
    assert parse_time(text) == expected


@pytest.mark.parametrize("text", ["yesterday", "", "-5", "2024-13-01", "1714521600.5"])
def test_a_time_that_is_neither_is_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="neither ISO-8601"):
        parse_time(text)


# -- each filter ---------------------------------------------------------------------------


def test_no_filter_selects_everything() -> None:
    assert selects(Selection(), letter())
    assert selects(Selection(), letter(tenant_id=None, notification_id=None))


def test_stage_matches_exactly_or_as_the_prefix_of_a_sub_stage() -> None:
    enrich = Selection(stages=("enrich",))
    assert selects(enrich, letter(stage="enrich"))
    assert selects(enrich, letter(stage="enrich:UserProfile"))
    assert not selects(enrich, letter(stage="enrichment"))
    assert not selects(enrich, letter(stage="request"))
    assert selects(Selection(stages=("enrich:UserProfile",)), letter(stage="enrich:UserProfile"))
    assert not selects(Selection(stages=("enrich:UserProfile",)), letter(stage="enrich"))


def test_tenant_matches_exactly_and_never_a_record_without_one() -> None:
    acme = Selection(tenants=("acme",))
    assert selects(acme, letter(tenant_id="acme"))
    assert not selects(acme, letter(tenant_id="acme-eu"))
    assert not selects(acme, letter(tenant_id=None))


def test_notification_ids_are_any_of_the_given() -> None:
    ids = Selection(notification_ids=("n-1", "n-2"))
    assert selects(ids, letter(notification_id="n-1"))
    assert selects(ids, letter(notification_id="n-2"))
    assert not selects(ids, letter(notification_id="n-3"))
    assert not selects(ids, letter(notification_id=None))


def test_error_type_matches_the_class_name() -> None:
    assert selects(Selection(error_types=("SchemaMismatchError",)), letter())
    assert not selects(Selection(error_types=("Rejected",)), letter())
    assert not selects(Selection(error_types=("schemamismatcherror",)), letter())


def test_error_contains_is_case_insensitive_and_searches_the_history() -> None:
    assert selects(Selection(error_contains="NOT NotificationRequest"), letter())
    assert not selects(Selection(error_contains="timeout"), letter())
    earlier = letter(error_history=["SMTP timeout after 10s", "connection refused"])
    assert selects(Selection(error_contains="timeout"), earlier)
    assert not selects(Selection(error_contains="timeout"), letter(error_history=None))


def test_source_topic_compares_physical_names() -> None:
    requests = Selection(source_topics=("p.notifications.requests",))
    assert selects(requests, letter())
    assert not selects(requests, letter(source_topic="notifications.requests"))
    assert not selects(requests, letter(source_topic="p.notifications.accepted"))


def test_since_is_inclusive_and_until_exclusive() -> None:
    window = Selection(since=MAY_1, until=MAY_1 + 1000)
    assert not selects(window, letter(failed_at=MAY_1 - 1))
    assert selects(window, letter(failed_at=MAY_1))
    assert selects(window, letter(failed_at=MAY_1 + 999))
    assert not selects(window, letter(failed_at=MAY_1 + 1000))
    assert selects(Selection(since=MAY_1), letter(failed_at=MAY_1 + 10**9))
    assert selects(Selection(until=MAY_1), letter(failed_at=0))


def test_partition_and_offsets_are_the_dead_letter_position_both_ends_inclusive() -> None:
    range_ = Selection(partition=2, offset_from=10, offset_to=12)
    assert not selects(range_, letter(), partition=2, offset=9)
    assert selects(range_, letter(), partition=2, offset=10)
    assert selects(range_, letter(), partition=2, offset=12)
    assert not selects(range_, letter(), partition=2, offset=13)
    assert not selects(range_, letter(), partition=1, offset=11)
    # Not the source position: the record's own source_partition/offset play no part.
    assert not selects(Selection(partition=1), letter(source_partition=1), partition=0)
    # Offsets without a partition apply to every partition.
    assert selects(Selection(offset_from=5), letter(), partition=3, offset=5)
    assert not selects(Selection(offset_from=5), letter(), partition=0, offset=4)


# -- combinations --------------------------------------------------------------------------


def test_filters_are_and_ed_and_repeated_values_or_ed() -> None:
    selection = Selection(
        stages=("request", "deliver"),
        tenants=("acme",),
        error_contains="schema",
        since=MAY_1,
    )
    assert selects(selection, letter())
    assert selects(selection, letter(stage="deliver"))
    assert not selects(selection, letter(stage="render"))  # stage fails
    assert not selects(selection, letter(tenant_id="globex"))  # tenant fails
    assert not selects(selection, letter(error="SMTP timeout"))  # error fails
    assert not selects(selection, letter(failed_at=MAY_1 - 1))  # time fails


def test_a_filter_on_every_field_selects_only_the_exact_record() -> None:
    selection = Selection(
        stages=("request",),
        tenants=("acme",),
        notification_ids=("n-1",),
        error_types=("SchemaMismatchError",),
        error_contains="writer schema",
        source_topics=("p.notifications.requests",),
        since=MAY_1,
        until=MAY_1 + 1,
        partition=0,
        offset_from=4,
        offset_to=4,
    )
    assert selects(selection, letter(), partition=0, offset=4)
    for change in (
        {"stage": "render"},
        {"tenant_id": "globex"},
        {"notification_id": "n-2"},
        {"error_type": "Rejected"},
        {"error": "other"},
        {"source_topic": "p.orders.events"},
        {"failed_at": MAY_1 + 1},
    ):
        assert not selects(selection, letter(**change), partition=0, offset=4), change
    assert not selects(selection, letter(), partition=0, offset=5)


# -- the listing line ----------------------------------------------------------------------


def test_a_listing_line_names_position_stage_tenant_notification_and_error() -> None:
    error = "line one\nline two " + "x" * 200
    line = describe(3, 42, letter(error=error, error_history=["a", "b"]), prefix="p.")
    assert line.startswith("3:42  2024-05-01T00:00:00Z  request  tenant=acme  notification=n-1")
    assert "from=notifications.requests  SchemaMismatchError: line one line two x" in line
    assert line.endswith("x  [history: 2]")
    shown = line.split("SchemaMismatchError: ")[1].removesuffix("  [history: 2]")
    assert len(shown) == 80
    bare = describe(0, 0, letter(tenant_id=None, notification_id=None))
    assert "tenant=-  notification=-" in bare
    assert "history" not in bare


# -- arguments -----------------------------------------------------------------------------


def test_arguments_build_the_selection() -> None:
    argv = (
        "--stage deliver --tenant acme --tenant globex --notification-id n-1"
        " --notification-id n-2 --error-type RuntimeError --error-contains timeout"
        " --source-topic notifications.deliver.email --since 2024-05-01 --until 1714608000000"
        " --partition 2 --offset-from 10 --offset-to 20 --limit 5 --to notifications.requests"
    )
    args, selection = parse_args(
        argv.split(),
        SETTINGS,
        CATALOG,
    )
    assert selection == Selection(
        stages=("deliver",),
        tenants=("acme", "globex"),
        notification_ids=("n-1", "n-2"),
        error_types=("RuntimeError",),
        error_contains="timeout",
        source_topics=("p.notifications.deliver.email",),
        since=MAY_1,
        until=MAY_1 + 86_400_000,
        partition=2,
        offset_from=10,
        offset_to=20,
    )
    assert (args.limit, args.apply, args.to) == (5, False, "p.notifications.requests")


def test_the_default_is_a_dry_run_of_everything() -> None:
    args, selection = parse_args([], SETTINGS, CATALOG)
    assert selection == Selection()
    assert (args.apply, args.to, args.limit) == (False, None, None)
    assert parse_args(["--apply"], SETTINGS, CATALOG)[0].apply is True


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "last tuesday"], "argument --since: 'last tuesday' is neither ISO-8601"),
        (["--until", "2024-02-30"], "argument --until: '2024-02-30' is neither ISO-8601"),
        (["--since", "2024-05-02", "--until", "2024-05-01"], "--since must be before --until"),
        (["--since", "2024-05-01", "--until", "2024-05-01"], "--since must be before --until"),
        (["--offset-from", "9", "--offset-to", "3"], "--offset-from must not be after"),
        (["--offset-from", "-1"], "argument --offset-from: -1 is below 0"),
        (["--partition", "two"], "argument --partition: 'two' is not an integer"),
        (["--limit", "0"], "argument --limit: 0 is below 1"),
        (["--tenant", " "], "argument --tenant: must not be empty"),
        (["--to", "notifications.request"], "--to: topic 'notifications.request' is not in"),
        (["--stages", "request"], "unrecognized arguments: --stages"),
        (["--apply", "yes"], "unrecognized arguments: yes"),
    ],
)
def test_bad_arguments_exit_2_with_a_clear_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv, SETTINGS, CATALOG)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: python -m streams.replay" in err
    assert message in err
