"""Crash-and-rebalance soak: exact status accounting through kill -9s, a rebalance and a sink
restart (issue 16, docs/reliability.md).

    make soak                                  # 100,000 notifications, 5 worker kills
    python bench/soak.py --count 20000 --kills 5 --seed 7 --database-url postgresql+psycopg://...

Runs the real processes (worker, Postgres sink) on uuid-prefixed topics of the given broker,
with capture servers for every channel it uses: in-app (the inbox topic and the sink's
inbox table), email (an aiosmtpd server) and webhooks (a local receiver that records each
request's notification id and Idempotency-Key). The traffic mixes those channels, opted-out
recipients (suppressed), idempotency keys and requests that reuse one (duplicate), exact
re-sends of a request (at-least-once upstream: one notification, one final status) and a
poison message every --poison-every requests (dead-lettered).

While it drains, at fixed points of progress (final statuses in the sink), it SIGKILLs a
worker process --kills times and restarts it, starts a second worker and later stops it
(1 -> 2 -> 1, two rebalances), and restarts the sink once. At the end it counts from the
sink, the capture servers and the topics, prints a table and exits non-zero when a
notification is lost, a status is double-counted (two different final events for one
notification), a final status is not the one expected, something was delivered that should
not have been, or a poison message was not dead-lettered. Repeated deliveries are counted
and allowed only where the channel has no idempotency key (SMTP); webhook repeats must carry
their first send's key.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import sqlalchemy as sa  # noqa: E402

from core.ids import notification_id  # noqa: E402
from core.lifecycle import FINAL_STATUSES  # noqa: E402
from core.sealing import SecretBox, new_key  # noqa: E402
from tests.support.http_peer import HttpPeer, Recorded, Reply  # noqa: E402
from tests.support.pipeline import Pipeline, Process, wait_materialised  # noqa: E402
from tests.support.requests import request_record  # noqa: E402
from tests.support.smtp import SmtpCapture  # noqa: E402

TENANTS = ("acme", "globex")
CHANNELS = (("in_app", 0.5), ("email", 0.25), ("webhook", 0.25))
EXPECTED_FINAL = {"in_app": "delivered", "email": "sent", "webhook": "delivered"}
DELIVERING = {"delivered", "sent"}


@dataclass(frozen=True)
class Plan:
    count: int = 100_000
    kills: int = 5
    seed: int = 1
    users: int = 5_000
    opted_out_share: float = 0.03
    keyed_share: float = 0.10  # requests with an idempotency key
    reuse_share: float = 0.20  # of those, followed by a request reusing the key
    resend_share: float = 0.01  # requests produced twice, byte for byte
    poison_every: int = 5_000
    stall_timeout: float = 300.0  # give up when nothing became final for this long


@dataclass
class Traffic:
    """What was produced and what each notification must end as."""

    expected: dict[str, str] = field(default_factory=dict)  # nid -> final status
    channel: dict[str, str] = field(default_factory=dict)  # nid -> channel
    requests: int = 0  # valid requests (a re-send counted once)
    resends: int = 0
    poison: int = 0


class WebhookCapture:
    """A webhook receiver: each request's notification id and Idempotency-Key."""

    def __init__(self) -> None:
        self.sends: Counter[str] = Counter()
        self.keys: dict[str, set[str]] = defaultdict(set)
        self._lock = threading.Lock()

    def __call__(self, request: Recorded) -> Reply:
        nid = request.json()["notification_id"]
        with self._lock:
            self.sends[nid] += 1
            self.keys[nid].add(request.headers.get("idempotency-key", ""))
        return Reply(200, json={"ok": True})


class QuietPeer(HttpPeer):
    """An HttpPeer that keeps no request list (a soak sends hundreds of thousands)."""

    def __init__(self) -> None:
        super().__init__()
        # A worker killed mid-request resets its connection: expected here, not news.
        self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]

    def _answer(self, recorded: Recorded) -> Reply:
        assert self.handler is not None
        return self.handler(recorded)


@contextmanager
def fresh_database(admin_url: str) -> Iterator[str]:
    name = f"soak_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def produce_traffic(pipe: Pipeline, plan: Plan, rng: random.Random) -> Traffic:
    traffic = Traffic()
    users = [(rng.choice(TENANTS), f"u{i}") for i in range(plan.users)]
    opted_out = set(rng.sample(users, int(plan.users * plan.opted_out_share)))
    for tenant, user in opted_out:
        record = {"tenant_id": tenant, "user_id": user, "updated_at": now_ms(), "opted_out": True}
        pipe.produce_record("users.preferences", f"{tenant}:{user}", record)
    wait_materialised(pipe, "users.preferences", timeout=180)

    channels, weights = zip(*CHANNELS, strict=True)
    pending_reuse: list[tuple[int, str, str, str]] = []  # (due index, tenant, user, key)
    for index in range(plan.count):
        if plan.poison_every and index % plan.poison_every == plan.poison_every // 2:
            pipe.produce("notifications.requests", "poison", b"\xc3\x01not-avro-" + bytes(8))
            traffic.poison += 1
        reuse = pending_reuse[0] if pending_reuse and pending_reuse[0][0] <= index else None
        if reuse is not None:
            pending_reuse.pop(0)
            _, tenant, user, key = reuse
        else:
            tenant, user = rng.choice(users)
            key = None
            if rng.random() < plan.keyed_share:
                key = uuid.uuid4().hex
                if rng.random() < plan.reuse_share:
                    pending_reuse.append((index + rng.randint(1, 50), tenant, user, key))
        channel = rng.choices(channels, weights)[0]
        record = request_record(
            user,
            tenant=tenant,
            channels=[channel],
            idempotency_key=key,
            metadata={"soak": str(index)},
        )
        nid = notification_id(tenant, record["request_id"], user, channel)
        if reuse is not None:
            outcome = "duplicate"
        elif (tenant, user) in opted_out:
            outcome = "suppressed"
        else:
            outcome = EXPECTED_FINAL[channel]
        traffic.expected[nid], traffic.channel[nid] = outcome, channel
        traffic.requests += 1
        copies = 2 if reuse is None and rng.random() < plan.resend_share else 1
        traffic.resends += copies - 1
        for _ in range(copies):
            pipe.produce_record("notifications.requests", f"{tenant}:{user}", record)
        if index % 1000 == 999:
            pipe.producer.poll(0)
    pipe.flush()
    return traffic


def now_ms() -> int:
    return int(time.time() * 1000)


class Chaos:
    """Faults at fixed points of progress: kills, a second worker joining and leaving, a sink
    restart. Each fires once, in order, when progress passes its mark."""

    def __init__(self, pipe: Pipeline, plan: Plan, rng: random.Random, log: Callable[[str], None]):
        self.pipe, self.rng, self.log = pipe, rng, log
        env = {
            k: v for k, v in pipe.worker.env.items() if k not in ("WORKER_WEB_PORT", "METRICS_PORT")
        }
        self.second = Process("worker-2", pipe.worker.argv, env, pipe.worker.log_path.parent)
        # Marks end at 80%: a fault after the last notification is final tests nothing.
        marks: list[tuple[float, str]] = [(0.25, "join"), (0.45, "sink"), (0.60, "leave")]
        for i in range(plan.kills):
            marks.append((0.05 + i * 0.75 / max(plan.kills - 1, 1), "kill"))
        self.marks = sorted(marks)
        self.done: list[str] = []

    def step(self, progress: float) -> None:
        while self.marks and progress >= self.marks[0][0]:
            _, action = self.marks.pop(0)
            getattr(self, f"_{action}")()
            self.done.append(action)
            late = "  (after the drain: it tests the restart only)" if progress >= 1 else ""
            self.log(f"{progress:6.1%}  {action}{late}")

    @property
    def finished(self) -> bool:
        return not self.marks

    def workers(self) -> list[Process]:
        return [p for p in (self.pipe.worker, self.second) if p.alive()]

    def _kill(self) -> None:
        victim = self.rng.choice(self.workers())
        victim.stop(signal.SIGKILL)
        time.sleep(self.rng.uniform(0.5, 3.0))
        victim.start()

    def _join(self) -> None:
        self.second.start()

    def _leave(self) -> None:
        self.second.stop()

    def _sink(self) -> None:
        self.pipe.sink.stop()
        time.sleep(1.0)
        self.pipe.sink.start()

    def stop(self) -> None:
        self.second.stop()


def finals_in_sink(engine: sa.Engine) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.text("SELECT count(*) FROM notifications WHERE status = ANY(:finals)"),
                {"finals": sorted(FINAL_STATUSES)},
            ).scalar_one()
        )


@dataclass
class Report:
    rows: list[tuple[str, int | str]]
    failures: list[str]

    def print(self) -> None:
        width = max(len(name) for name, _ in self.rows)
        for name, value in self.rows:
            print(f"  {name:<{width}}  {value:>10}")
        for failure in self.failures:
            print(f"FAIL: {failure}")
        print("OK: every notification has exactly one final status" if not self.failures else "")


def count(
    pipe: Pipeline,
    engine: sa.Engine,
    traffic: Traffic,
    smtp: SmtpCapture,
    hooks: WebhookCapture,
    drain_seconds: float,
) -> Report:
    with engine.connect() as conn:
        finals: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for nid, status, event_id in conn.execute(
            sa.text(
                "SELECT notification_id, status, event_id FROM notification_events "
                "WHERE status = ANY(:finals)"
            ),
            {"finals": sorted(FINAL_STATUSES)},
        ):
            finals[nid].add((status, event_id))
        accepted = conn.execute(
            sa.text(
                "SELECT count(DISTINCT notification_id) FROM notification_events "
                "WHERE status = 'accepted'"
            )
        ).scalar_one()
        inbox_rows = conn.execute(sa.text("SELECT count(*) FROM inbox")).scalar_one()

    expected = traffic.expected
    lost = [nid for nid in expected if not finals.get(nid)]
    double = [nid for nid, events in finals.items() if len(events) > 1]
    wrong = [
        nid
        for nid, events in finals.items()
        if nid in expected and len(events) == 1 and next(iter(events))[0] != expected[nid]
    ]
    strangers = [nid for nid in finals if nid not in expected]
    by_final = Counter(status for events in finals.values() for status, _ in events)

    inbox_sends = Counter(
        pipe.codec.decode(m.value(), "InAppMessage")["notification_id"]
        for m in pipe.read_topic("notifications.inbox", timeout=5.0)
    )
    smtp_sends = Counter({nid: len(msgs) for nid, msgs in smtp.by_notification_id().items()})
    deliveries = {"in_app": inbox_sends, "email": smtp_sends, "webhook": hooks.sends}
    undue = [
        nid
        for channel, sends in deliveries.items()
        for nid in sends
        if expected.get(nid) not in DELIVERING or traffic.channel.get(nid) != channel
    ]
    missing_delivery = [
        nid
        for nid, outcome in expected.items()
        if outcome in DELIVERING and not deliveries[traffic.channel[nid]].get(nid)
    ]
    key_changes = [nid for nid, keys in hooks.keys.items() if len(keys) != 1]

    dead = pipe.read_topic("notifications.dead-letter", timeout=5.0)
    dead_positions = {
        (r["source_topic"], r["source_partition"], r["source_offset"])
        for r in (pipe.codec.decode(m.value(), "DeadLetter") for m in dead)
    }

    def repeats(sends: Counter[str]) -> int:
        return sum(n - 1 for n in sends.values())

    rows: list[tuple[str, int | str]] = [
        ("requested (valid requests)", traffic.requests),
        ("  of them re-sent byte for byte", traffic.resends),
        ("poison messages", traffic.poison),
        ("notifications expected", len(expected)),
        ("accepted", accepted),
        *((f"final: {status}", n) for status, n in sorted(by_final.items())),
        ("lost (no final status)", len(lost)),
        ("double-counted (2+ final events)", len(double)),
        ("final status not the expected one", len(wrong)),
        ("delivered but should not have been", len(undue)),
        ("final but never delivered", len(missing_delivery)),
        ("in-app: inbox messages / sink rows", f"{sum(inbox_sends.values())} / {inbox_rows}"),
        ("in-app: repeated inbox messages", repeats(inbox_sends)),
        ("email: repeated deliveries (no key)", repeats(smtp_sends)),
        ("webhook: repeated sends (same key)", repeats(hooks.sends)),
        ("dead-lettered (messages / distinct)", f"{len(dead)} / {len(dead_positions)}"),
        ("time to drain (s)", f"{drain_seconds:.0f}"),
    ]
    failures = []
    for what, ids in (
        ("lost", lost),
        ("double-counted", double),
        ("unexpected final status", wrong),
        ("final status for a notification nobody asked for", strangers),
        ("delivered but should not have been", undue),
        ("final but never delivered", missing_delivery),
        ("webhook repeat with another Idempotency-Key", key_changes),
    ):
        if ids:
            # The channel names the path to look at: a provider call or the inbox produce.
            examples = [f"{nid} ({traffic.channel.get(nid, '?')})" for nid in ids[:3]]
            failures.append(f"{len(ids)} {what}, e.g. {examples}")
    if len(dead_positions) != traffic.poison:
        failures.append(f"{len(dead_positions)} messages dead-lettered, {traffic.poison} poison")
    return Report(rows, failures)


def run(plan: Plan, *, bootstrap: str, admin_database_url: str, log_dir: Path) -> Report:
    rng = random.Random(plan.seed)
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()

    def log(line: str) -> None:
        print(f"[{time.monotonic() - started:7.1f}s] {line}", flush=True)

    secrets_key = new_key()
    box = SecretBox.from_settings(secrets_key, "k1")
    assert box is not None
    smtp = SmtpCapture().start()
    hooks = WebhookCapture()
    peer = QuietPeer()
    peer.handler = hooks
    peer.start()
    with fresh_database(admin_database_url) as database_url:
        pipe = Pipeline(
            bootstrap=bootstrap,
            database_url=database_url,
            smtp_port=smtp.port,
            log_dir=log_dir,
            extra_env={
                "PROVIDER_SECRETS_KEY": secrets_key,
                "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
            },
        )
        engine = sa.create_engine(database_url)
        chaos = Chaos(pipe, plan, rng, log)
        try:
            pipe.provision()
            for tenant in TENANTS:
                pipe.produce_record(
                    "config.providers",
                    f"{tenant}:hook",
                    {
                        "tenant_id": tenant,
                        "provider_id": "hook",
                        "channel": "webhook",
                        "provider": "webhook",
                        "settings": {"url": f"{peer.url}/hook"},
                        "secrets_sealed": box.seal(
                            {"secret": "s"}, tenant_id=tenant, provider_id="hook"
                        ),
                    },
                )
            pipe.flush()
            pipe.start()
            log(f"pipeline up (topics {pipe.prefix}*, logs {log_dir})")
            traffic = produce_traffic(pipe, plan, rng)
            produced_at = time.monotonic()
            log(f"produced {traffic.requests} requests, {traffic.poison} poison")
            total, done, last_change = len(traffic.expected), 0, time.monotonic()
            while done < total or not chaos.finished:
                time.sleep(1.0)
                for process in (pipe.worker, pipe.sink):
                    if not process.alive() and process.proc is not None:
                        raise SystemExit(f"{process.name} exited:\n{process.tail()}")
                now = finals_in_sink(engine)
                if now != done:
                    done, last_change = now, time.monotonic()
                chaos.step(done / total)
                if time.monotonic() - last_change > plan.stall_timeout:
                    log(f"no progress for {plan.stall_timeout:.0f}s at {done}/{total}: counting")
                    break
            drain = time.monotonic() - produced_at
            time.sleep(3.0)  # the last deliveries' inbox messages and capture writes
            log(f"drained {done}/{total} in {drain:.0f}s after {', '.join(chaos.done)}")
            report = count(pipe, engine, traffic, smtp, hooks, drain)
        finally:
            chaos.stop()
            pipe.stop()
            engine.dispose()
            peer.stop()
            smtp.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=Plan.count)
    parser.add_argument("--kills", type=int, default=Plan.kills)
    parser.add_argument("--seed", type=int, default=Plan.seed)
    parser.add_argument("--poison-every", type=int, default=Plan.poison_every)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--database-url", required=True, help="a Postgres server's admin URL")
    parser.add_argument("--log-dir", type=Path, default=REPO / "var" / "soak")
    args = parser.parse_args()
    plan = Plan(count=args.count, kills=args.kills, seed=args.seed, poison_every=args.poison_every)
    report = run(
        plan,
        bootstrap=args.bootstrap,
        admin_database_url=args.database_url,
        log_dir=args.log_dir / time.strftime("%Y%m%d-%H%M%S"),
    )
    print(f"\nsoak: {plan}")
    report.print()
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
