"""The scheduler stage: hold notifications until a time, collect digests, release them.

notifications.deferred (DeferredCommand, keyed tenant_id:user_id) -> notifications.accepted
  schedule: keep the notification until `release_at`, then produce it to notifications.accepted
            (it re-enters enrich, which checks preferences again).
  digest:   add it to the open digest window of its tenant + user + channel + digest key; a
            flushed window becomes ONE new notification (template = the rule's template).
  tick:     a timer's nudge for one partition (no key): release what is due there.
  cancel:   drop a held notification (`notification_id`, keyed by its recipient): the shim's
            DELETE /api/v1/notifications/{id}. Too late (released, or never held): nothing.
  reschedule: move a held notification to `release_at` (PATCH .../{id}); past: release now.
Status: deferred (each digest item, once) | accepted (a digest's own notification) |
        digested (each item when its digest is sent; final) | cancelled (a cancel; final).

Tables (written only while processing an event of the entry's partition, never from a timer):
  schedule: notification_id -> {"notification", "release_at", "issued_at", "partition",
            "traceparent"},
            after release a small marker {"released_at", "issued_at", "partition"}.
  digests:  "w|tenant:user|channel|digest_key" -> window header (digest id, rule, count, times);
            "<digest_id>#<n>" -> the n-th item; "seen|<notification_id>" -> its window.
See docs/scheduling.md for the crash windows and why ticks are per partition.
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import Any

from faust.types import EventT, StreamT

from core.ids import digest_id, expected_partition, recipient_key
from core.lanes import lane_of, lane_topic
from streams.runtime import config_views, metrics
from streams.runtime.app import app, catalog, settings, table, topics
from streams.runtime.events import (
    Rejected,
    dead_letter,
    decode_or_dead_letter,
    emit_status,
    guarded,
    now_ms,
    outgoing_headers,
)
from streams.stages.enrich import preferences
from streams.state import preferences as rules
from streams.state.digests import (
    digest_notification,
    is_full,
    planned_flush,
    rule_problem,
    window_key,
)

log = logging.getLogger(__name__)

STAGE = "scheduler"
# Markers (released schedules, collected digest items) outlive what they mark by this long:
# they turn a replayed command (from the last committed offset, seconds back) into a no-op.
MARKER_TTL_MS = 24 * 3600 * 1000
# A tick not processed within this long is assumed lost (a rebalance) and sent again.
TICK_STALE_SECONDS = 30.0

RELEASE, FLUSH, EXPIRE_SCHEDULE, EXPIRE_SEEN = "release", "flush", "expire-schedule", "expire-seen"

schedule = table("schedule")
digests = table("digests")


class DueIndex:
    """Per partition, what becomes due when: a heap of (due_at, kind, table key).

    The tables are the truth; the index only says where to look, so a tick costs
    O(due · log n) instead of a scan of every entry. An entry is checked against its
    table when popped (a stale one is skipped). Rebuilt from the tables, one scan per
    partition, on the first tick after every table recovery (start-up, rebalance).
    """

    def __init__(self) -> None:
        self._heaps: dict[int, list[tuple[int, str, str]]] = {}
        self._built: set[int] = set()

    def invalidate(self) -> None:
        self._heaps.clear()
        self._built.clear()

    def is_built(self, partition: int) -> bool:
        return partition in self._built

    def mark_built(self, partition: int) -> None:
        self._built.add(partition)

    def reset(self, partition: int) -> None:
        self._heaps[partition] = []
        self._built.discard(partition)

    def push(self, partition: int, due_at: int, kind: str, key: str) -> None:
        heapq.heappush(self._heaps.setdefault(partition, []), (due_at, kind, key))

    def pop_due(self, partition: int, now: int) -> list[tuple[int, str, str]]:
        heap = self._heaps.get(partition, [])
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        return due

    def size(self, partition: int) -> int:
        return len(self._heaps.get(partition, []))


index = DueIndex()
# Partition -> when its last tick was sent (monotonic); cleared when the tick is processed.
_ticks_in_flight: dict[int, float] = {}


@schedule.on_recover
async def _schedule_recovered() -> None:
    index.invalidate()
    _ticks_in_flight.clear()  # ticks sent before a rebalance may never be processed here


@digests.on_recover
async def _digests_recovered() -> None:
    index.invalidate()


def check_placement(event: EventT, notification: dict[str, Any]) -> None:
    """A command must sit in its recipient's partition, or its digest would be split."""
    key = recipient_key(notification["tenant_id"], notification["recipient"]["user_id"])
    if event.key != key:
        raise Rejected(f"key {event.key!r}: a {key!r} notification must be keyed {key!r}")
    message = event.message
    expected = expected_partition(key, catalog["notifications.deferred"].partitions)
    if message.partition != expected:
        raise Rejected(
            f"key {key!r} is on partition {message.partition}, murmur2 puts it on {expected}: "
            "produce notifications.deferred with the murmur2 partitioner"
        )


# -- schedule ---------------------------------------------------------------------------------
async def hold(
    command: dict[str, Any], partition: int, now: int, headers: dict[str, bytes]
) -> None:
    """Keep a notification until its release time, or release it at once if it is due."""
    notification = command["notification"]
    nid = notification["notification_id"]
    entry = schedule.get(nid)
    if entry is not None and command["issued_at"] <= entry["issued_at"]:
        # Already held, or already released (a marker): a replayed command changes nothing.
        # A new deferral of the same notification (quiet hours after send_at) is issued
        # after the release, so it is newer than the marker.
        return
    entry = {
        "notification": notification,
        "release_at": command["release_at"],
        "reason": command.get("reason"),
        "issued_at": command["issued_at"],
        "partition": partition,
        # The released notification continues the trace of the request, not of a tick.
        "traceparent": headers.get("traceparent", b"").decode(),
    }
    if command["release_at"] <= now:
        await release([entry], partition, now)
        return
    schedule[nid] = entry
    index.push(partition, command["release_at"], RELEASE, nid)


async def release(entries: list[dict[str, Any]], partition: int, now: int) -> None:
    """Produce to notifications.accepted, wait for the broker, THEN mark released.

    A crash in between releases again on replay: same notification id, so the same
    status event ids, and the deliver stage's `delivered` table sends nothing twice.
    """
    for entry in entries:
        notification = entry["notification"]
        key = recipient_key(notification["tenant_id"], notification["recipient"]["user_id"])
        traceparent = entry.get("traceparent")
        headers = {"traceparent": traceparent.encode()} if traceparent else None
        accepted = topics.sink(lane_topic("notifications.accepted", lane_of(notification)))
        await accepted.send(key=key, value=notification, headers=headers)
    await app.producer.flush()
    for entry in entries:
        notification = entry["notification"]
        nid = notification["notification_id"]
        schedule[nid] = {
            "released_at": now,
            "issued_at": entry["issued_at"],
            "partition": partition,
        }
        index.push(partition, now + MARKER_TTL_MS, EXPIRE_SCHEDULE, nid)
        metrics.processed(STAGE, "released", notification["occurred_at"])


async def change_held(
    event: EventT, command: dict[str, Any], partition: int, now: int, headers: dict[str, bytes]
) -> None:
    """Cancel or reschedule a held notification; too late (released, or never held here):
    nothing, the notification goes its way."""
    kind = command["kind"]
    nid = command.get("notification_id") or ""
    entry = schedule.get(nid) if nid else None
    if entry is None or "notification" not in entry:
        log.info("scheduler: %s of %s: not held here (already released, or never)", kind, nid)
        metrics.processed(STAGE, f"{kind}_too_late")
        return
    notification = entry["notification"]
    key = recipient_key(notification["tenant_id"], notification["recipient"]["user_id"])
    if event.key != key:  # a command names its notification's recipient, or it is refused
        await dead_letter(event, stage=STAGE, error=Rejected(f"{kind} of {nid}: key {key!r}"))
        return
    if kind == "cancel":
        await cancel(nid, entry, partition, now, headers)
    else:
        await reschedule(nid, entry, command, partition, now, headers)


async def reschedule(
    nid: str,
    entry: dict[str, Any],
    command: dict[str, Any],
    partition: int,
    now: int,
    headers: dict[str, bytes],
) -> None:
    """A new release time. The notification's own send_at moves with it, or enrich would hold
    it again until the old one when it is released earlier."""
    release_at = command["release_at"]
    notification = {**entry["notification"], "send_at": release_at}
    entry = {**entry, "notification": notification, "release_at": release_at}
    entry["issued_at"] = max(entry["issued_at"], command["issued_at"])
    if release_at <= now:
        await release([entry], partition, now)
        return
    schedule[nid] = entry
    index.push(partition, release_at, RELEASE, nid)
    await emit_status(
        notification,
        "deferred",
        stage=STAGE,
        headers=headers,
        reason=f"rescheduled: {rules.send_at_reason(release_at)}",
        deferred_until=release_at,
    )
    metrics.processed(STAGE, "rescheduled", notification["occurred_at"])


async def cancel(
    nid: str, entry: dict[str, Any], partition: int, now: int, headers: dict[str, bytes]
) -> None:
    """Drop a held notification and say so (`cancelled`). The released marker it leaves keeps
    a replayed schedule command (older `issued_at`) from holding it again."""
    notification = entry["notification"]
    await emit_status(
        notification, "cancelled", stage=STAGE, headers=headers, reason="cancelled by the sender"
    )
    schedule[nid] = {"released_at": now, "issued_at": entry["issued_at"], "partition": partition}
    index.push(partition, now + MARKER_TTL_MS, EXPIRE_SCHEDULE, nid)
    metrics.processed(STAGE, "cancelled", notification["occurred_at"])


# -- digests ----------------------------------------------------------------------------------
async def collect(
    command: dict[str, Any], partition: int, now: int, headers: dict[str, bytes]
) -> None:
    notification = command["notification"]
    nid = notification["notification_id"]
    problem = rule_problem(command.get("digest_rule"))
    if problem is None and notification.get("digest_id"):
        problem = "a digest's own notification is never collected into a digest"
    if problem is not None:
        raise Rejected(problem)
    digest_key = command.get("digest_key") or ""
    wkey = window_key(notification, digest_key)
    header = digests.get(wkey)
    seen = digests.get(f"seen|{nid}")
    if seen is not None:
        if header is not None and header["digest_id"] == seen["digest_id"]:
            # Replayed while its window is open: repeat the status (same event id).
            await _emit_collected(notification, seen["digest_id"], seen["deferred_until"], headers)
        return  # else already sent in an earlier digest
    if header is None:
        rule = command["digest_rule"]
        header = {
            "digest_id": digest_id(wkey, now),
            "digest_key": digest_key,
            "rule": rule,
            "first_at": now,
            "last_at": now,
            "count": 0,
            "flush_at": planned_flush(rule, now, now),
            "partition": partition,
        }
    n = header["count"]
    header = {
        **header,
        "count": n + 1,
        "last_at": now,
        "flush_at": planned_flush(header["rule"], header["first_at"], now),
    }
    did = header["digest_id"]
    await _emit_collected(notification, did, header["flush_at"], headers)
    # Order matters: the changelog partition keeps it, so a durable marker implies a durable
    # header and item (a replay after a crash re-adds whatever the marker does not cover).
    digests[f"{did}#{n}"] = {"notification": notification, "partition": partition}
    digests[wkey] = header
    digests[f"seen|{nid}"] = {
        "window": wkey,
        "digest_id": did,
        "deferred_until": header["flush_at"],
        "at": now,
        "partition": partition,
    }
    index.push(partition, now + MARKER_TTL_MS, EXPIRE_SEEN, f"seen|{nid}")
    metrics.processed(STAGE, "collected", notification["occurred_at"])
    if is_full(header["rule"], header["count"]):
        await flush(wkey, header, now, headers)
    else:
        index.push(partition, header["flush_at"], FLUSH, wkey)


async def _emit_collected(
    notification: dict[str, Any], did: str, until: int, headers: dict[str, bytes]
) -> None:
    await emit_status(
        notification,
        "deferred",
        stage=STAGE,
        headers=headers,
        reason=f"collected into digest {did}",
        deferred_until=until,
    )


async def flush(wkey: str, header: dict[str, Any], now: int, headers: dict[str, bytes]) -> None:
    """Send the window as one notification, mark its items digested, close the window.

    Everything is produced and acknowledged before the window is deleted: a crash before
    the delete flushes the same window again (same ids, no second send).
    """
    did = header["digest_id"]
    item_keys = [f"{did}#{n}" for n in range(header["count"])]
    items = [entry["notification"] for key in item_keys if (entry := digests.get(key))]
    if not items:
        log.warning("digest %s has no items left; closing it", did)
    items = await _drop_unwanted(items, headers)
    if items:
        digest = digest_notification(header, items, now)
        key = recipient_key(digest["tenant_id"], digest["recipient"]["user_id"])
        await emit_status(digest, "accepted", stage=STAGE, headers=headers)
        accepted = topics.sink(lane_topic("notifications.accepted", lane_of(digest)))
        await accepted.send(key=key, value=digest, headers=headers)
        reason = f"sent in digest notification {did}"
        for item in items:
            await emit_status(item, "digested", stage=STAGE, headers=headers, reason=reason)
        await app.producer.flush()
        metrics.processed(STAGE, "digest_flushed", items[0]["occurred_at"])
    # The header first: items left behind by a crash here are orphans the next index
    # rebuild deletes; `seen|` markers stay (until MARKER_TTL_MS) so replays stay no-ops.
    del digests[wkey]
    for key in item_keys:
        if key in digests:
            del digests[key]


async def _drop_unwanted(
    items: list[dict[str, Any]], headers: dict[str, bytes]
) -> list[dict[str, Any]]:
    """The items the recipient still wants, read against their preferences as they are now.

    An item waited in its window for up to the rule's window: a recipient who turned off its
    template, category or channel in the meantime must not get it in the digest. Each such
    item ends `suppressed` with enrich's reason; the digest's own notification goes through
    enrich again (channel, quiet hours, caps) like any other.
    """
    kept = []
    if items:
        await config_views.ensure_ready()
    for item in items:
        key = recipient_key(item["tenant_id"], item["recipient"]["user_id"])
        tenant = config_views.tenants.get(item["tenant_id"])
        prefs = rules.effective_preferences(preferences.get(key), tenant)
        reason = rules.suppression_reason(
            prefs, item["channel"], item.get("category"), item.get("template_id")
        )
        if reason is None:
            kept.append(item)
            continue
        await emit_status(item, "suppressed", stage=STAGE, headers=headers, reason=reason)
        metrics.processed(STAGE, "digest_item_suppressed", item["occurred_at"])
    return kept


# -- ticks ------------------------------------------------------------------------------------
def rebuild(partition: int) -> None:
    """Index one partition from the tables (after recovery); delete orphaned digest items."""
    index.reset(partition)
    for nid, entry in list(schedule.items()):
        if entry is None or entry.get("partition") != partition:
            continue
        if "notification" in entry:
            index.push(partition, entry["release_at"], RELEASE, nid)
        else:
            index.push(partition, entry["released_at"] + MARKER_TTL_MS, EXPIRE_SCHEDULE, nid)
    open_windows: set[str] = set()
    items: list[str] = []
    for key, entry in list(digests.items()):
        if entry is None or entry.get("partition") != partition:
            continue
        if key.startswith("w|"):
            open_windows.add(entry["digest_id"])
            index.push(partition, entry["flush_at"], FLUSH, key)
        elif key.startswith("seen|"):
            index.push(partition, entry["at"] + MARKER_TTL_MS, EXPIRE_SEEN, key)
        else:
            items.append(key)
    orphans = [key for key in items if key.split("#", 1)[0] not in open_windows]
    for key in orphans:
        del digests[key]
    index.mark_built(partition)
    log.info(
        "scheduler: partition %d indexed (%d due entries, %d orphaned digest items deleted)",
        partition,
        index.size(partition),
        len(orphans),
    )


async def sweep(partition: int, now: int, headers: dict[str, bytes]) -> None:
    """Release what is due in this partition; flush due windows; expire old markers."""
    if not index.is_built(partition):
        rebuild(partition)
    try:
        await _sweep(partition, now, headers)
    except BaseException:
        # Entries popped from the index were not all handled: rebuild it at the next tick.
        index.reset(partition)
        raise


async def _sweep(partition: int, now: int, headers: dict[str, bytes]) -> None:
    to_release: list[dict[str, Any]] = []
    for due_at, kind, key in index.pop_due(partition, now):
        if kind == RELEASE:
            entry = schedule.get(key)
            if entry and "notification" in entry and entry["release_at"] == due_at:
                to_release.append(entry)
        elif kind == FLUSH:
            header = digests.get(key)
            if header and header["flush_at"] <= now:
                await flush(key, header, now, headers)
        elif kind == EXPIRE_SCHEDULE:
            entry = schedule.get(key)
            if entry and "released_at" in entry and entry["released_at"] + MARKER_TTL_MS <= now:
                del schedule[key]
        elif kind == EXPIRE_SEEN:
            _expire_seen(partition, key, now)
    if to_release:
        await release(to_release, partition, now)


def _expire_seen(partition: int, key: str, now: int) -> None:
    seen = digests.get(key)
    if seen is None or seen["at"] + MARKER_TTL_MS > now:
        return
    header = digests.get(seen["window"])
    if header is not None and header["digest_id"] == seen["digest_id"]:
        # Its window is still open (a long one): keep the marker as long as the window.
        index.push(partition, now + MARKER_TTL_MS, EXPIRE_SEEN, key)
        return
    del digests[key]


async def handle(event: EventT) -> None:
    headers = outgoing_headers(event)
    command = await decode_or_dead_letter(event, "DeferredCommand", STAGE)
    if command is None:
        return
    partition = event.message.partition
    now = now_ms()
    if command["kind"] == "tick":
        _ticks_in_flight.pop(partition, None)
        await sweep(partition, now, headers)
        return
    if command["kind"] in ("cancel", "reschedule"):
        await change_held(event, command, partition, now, headers)
        return
    notification = command.get("notification")
    if notification is None:
        await dead_letter(
            event, stage=STAGE, error=Rejected(f"{command['kind']}: notification is required")
        )
        return
    try:
        check_placement(event, notification)
        if command["kind"] == "schedule":
            await hold(command, partition, now, headers)
        else:
            await collect(command, partition, now, headers)
    except Rejected as exc:
        await dead_letter(
            event,
            stage=STAGE,
            error=exc,
            tenant_id=notification["tenant_id"],
            notification_id=notification["notification_id"],
        )
        await emit_status(notification, "failed", stage=STAGE, headers=headers, reason=str(exc))


@app.agent(topics.source("notifications.deferred"), concurrency=1)
async def run_scheduler(stream: StreamT) -> None:
    async for event in stream.events():
        await guarded(STAGE, event, handle)


def tick_record() -> dict[str, Any]:
    return {
        "kind": "tick",
        "notification": None,
        "release_at": 0,
        "reason": None,
        "digest_key": None,
        "digest_rule": None,
        "issued_at": now_ms(),
        "notification_id": None,
    }


@app.timer(settings.scheduler_tick_seconds)
async def send_ticks() -> None:
    """One tick per partition of notifications.deferred this worker actively owns.

    Tables can only be written while processing an event of their partition, so the
    timer does not release anything itself: it asks the agent to, in-stream.
    """
    name = catalog.name("notifications.deferred")
    try:
        owned = sorted(tp.partition for tp in app.assignor.assigned_actives() if tp.topic == name)
    except Exception:  # not assigned yet (starting, rebalancing)
        return
    deferred = topics.sink("notifications.deferred")
    clock = time.monotonic()
    for partition in owned:
        sent = _ticks_in_flight.get(partition)
        if sent is not None and clock - sent < TICK_STALE_SECONDS:
            continue  # the previous tick is still queued behind a backlog: no pile-up
        _ticks_in_flight[partition] = clock
        try:
            await deferred.send(key=None, value=tick_record(), partition=partition)
        except Exception:
            log.exception("scheduler: could not send a tick to partition %d", partition)
            _ticks_in_flight.pop(partition, None)
