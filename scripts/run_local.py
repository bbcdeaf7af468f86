"""`make run`: the whole pipeline on the local broker, with sample notifications flowing.

Starts an SMTP capture server, the Faust worker, the Postgres/SQLite sink and the HTTP shim
as child processes, sends sample notifications (an email and an in-app message through the
shim, an email produced straight to Kafka), and prints every status transition.
Ctrl-C stops everything. `--demo` exits once the samples reached a final state.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from confluent_kafka import Consumer, Producer  # noqa: E402

from core.catalog import TopicCatalog  # noqa: E402
from core.ids import notification_id  # noqa: E402
from core.kafka_clients import client_config, producer_config  # noqa: E402
from core.lanes import request_topic  # noqa: E402
from core.lifecycle import FINAL_STATUSES  # noqa: E402
from core.provision import provision  # noqa: E402
from core.sealing import new_key  # noqa: E402
from core.settings import get_settings  # noqa: E402
from schemas import SchemaCatalog, build_codec  # noqa: E402

SHIM_PORT = int(os.environ.get("SHIM_PORT", "8000"))
# The local demo key, set here and only here (the library default has no keys): every child
# process this script starts inherits it. An SHIM_API_KEYS of your own wins.
os.environ.setdefault("SHIM_API_KEYS", json.dumps({"demo-key": "demo"}))
DEV_SECRETS_KEY_FILE = REPO / "var" / "dev-provider-secrets.key"


def fresh_dir(path: Path) -> Path:
    """An empty directory (what a previous run left in it removed)."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def use_development_secrets_key() -> None:
    """Without PROVIDER_SECRETS_KEY, provider secrets cannot be sealed (PUT answers 503): the
    local stack generates a key once in var/ and keeps it, so sealed secrets survive restarts.
    For development only: a real deployment sets its own key (docs/configuration.md)."""
    if os.environ.get("PROVIDER_SECRETS_KEY"):
        return
    if not DEV_SECRETS_KEY_FILE.exists():
        DEV_SECRETS_KEY_FILE.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(DEV_SECRETS_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(new_key())
    os.environ["PROVIDER_SECRETS_KEY"] = DEV_SECRETS_KEY_FILE.read_text().strip()
    os.environ.setdefault("PROVIDER_SECRETS_KEY_ID", "dev")
    print(
        f"WARNING: provider secrets are sealed with a development key ({DEV_SECRETS_KEY_FILE});"
        " set PROVIDER_SECRETS_KEY for anything but this local stack",
        flush=True,
    )


use_development_secrets_key()
API_KEY = next(iter(get_settings().shim_api_keys))


class PrintingSmtpHandler:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        print(f"  [smtp] mail to {message['To']}: {message['Subject']!r}", flush=True)
        return "250 OK"


def start(
    name: str, argv: list[str], log_dir: Path, env: dict[str, str | None] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child process; `env` adds variables to ours (None removes one)."""
    log = (log_dir / f"{name}.log").open("ab")
    print(f"starting {name}: logs in {log_dir / (name + '.log')}")
    environment = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=environment)


def wait_for_shim(timeout: float = 60, in_a_row: int = 10) -> None:
    """Until /ready answers 200 `in_a_row` times: each shim process follows its views on its
    own, and a new connection may reach any of them."""
    deadline = time.monotonic() + timeout
    ready = 0
    while time.monotonic() < deadline:
        try:
            answer = httpx.get(f"http://127.0.0.1:{SHIM_PORT}/ready", timeout=1)
            ready = ready + 1 if answer.status_code == 200 else 0
        except httpx.HTTPError:
            ready = 0
        if ready >= in_a_row:
            return
        time.sleep(0.5 if ready == 0 else 0.05)
    raise SystemExit("the shim did not come up; see var/logs/shim.log")


def send_samples() -> list[str]:
    """Two notifications through the HTTP shim, one straight to Kafka. Returns their ids."""
    ids = []
    with httpx.Client(
        base_url=f"http://127.0.0.1:{SHIM_PORT}", timeout=30, headers={"X-API-Key": API_KEY}
    ) as client:
        for body in (
            {
                "recipients": [{"user_id": "ada", "email": "ada@example.com"}],
                "channels": ["email"],
                "content": {
                    "subject": "Welcome, {{ name }}!",
                    "text": "Hello {{ name }}, your account is ready.",
                },
                "data": {"name": "Ada"},
            },
            {
                "recipients": [{"user_id": "ada"}],
                "channels": ["in_app"],
                "content": {"subject": "Tip", "text": "You have {{ n }} new features to try."},
                "data": {"n": 3},
            },
        ):
            response = client.post("/api/v1/notifications", json=body)
            response.raise_for_status()
            ids += [n["notification_id"] for n in response.json()["notifications"]]
            print(f"POST /api/v1/notifications -> {response.status_code} {response.json()}")

    settings = get_settings()
    codec = build_codec(settings.schema_registry_url, SchemaCatalog.load())
    request_id = str(uuid.uuid4())
    record = {
        "request_id": request_id,
        "tenant_id": settings.shim_api_keys[API_KEY],
        "occurred_at": int(time.time() * 1000),
        "channels": ["email"],
        "recipients": [{"user_id": "grace", "email": "grace@example.com"}],
        "content": {
            "subject": "Order {{ order }} shipped",
            "text": "Order {{ order }} is on its way.",
        },
        "data_json": json.dumps({"order": "A-1001"}),
    }
    producer = Producer(producer_config(settings))
    topic_names = TopicCatalog.load(settings)

    def produce_request(request: dict[str, Any], user: str) -> None:
        """Keyed tenant:user like every producer of the topic; tracks the email's id."""
        producer.produce(
            topic_names.name(request_topic(request)),
            key=f"{request['tenant_id']}:{user}",
            value=codec.encode("NotificationRequest", request),
        )
        ids.append(notification_id(request["tenant_id"], request["request_id"], user, "email"))

    produce_request(record, "grace")
    print(f"produced a NotificationRequest straight to Kafka (request {request_id})")

    # A seeded template in Portuguese, held until 5 seconds from now (send_at).
    request_id = str(uuid.uuid4())
    scheduled = {
        **record,
        "request_id": request_id,
        "recipients": [{"user_id": "joao", "email": "joao@example.com", "locale": "pt-BR"}],
        "content": None,
        "template_id": "welcome",
        "data_json": json.dumps({"name": "João"}),
        "send_at": int(time.time() * 1000) + 5000,
    }
    produce_request(scheduled, "joao")
    print(f"produced a templated request with send_at in 5 s (request {request_id})")

    # An upstream domain event: the order-created trigger rule turns it into a notification.
    order = {
        "event_id": f"evt-{uuid.uuid4()}",
        "type": "order.created",
        "tenant_id": record["tenant_id"],
        "id": "A-1002",
        "total": "42.00 EUR",
        "items": [{"name": "Kafka mug", "qty": 1}],
        "customer": {"id": "linus", "name": "Linus", "email": "linus@example.com"},
    }
    producer.produce(
        TopicCatalog.load(settings).name("orders.events"),
        key=order["id"],
        value=json.dumps(order).encode(),
    )
    print("produced an order.created event to orders.events (trigger rule order-created)")
    producer.flush(10)
    return ids


def follow_statuses(samples: list[str], since_ms: int, demo: bool, timeout: float = 120) -> None:
    """Print status events newer than `since_ms`; with `demo`, stop when the samples are done."""
    settings = get_settings()
    codec = build_codec(settings.schema_registry_url, SchemaCatalog.load())
    consumer = Consumer(
        client_config(
            settings,
            **{
                "group.id": f"run-local-{uuid.uuid4().hex[:6]}",
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
            },
        )
    )
    consumer.subscribe([TopicCatalog.load(settings).name("notifications.status")])
    pending = set(samples)
    deadline = time.monotonic() + timeout
    while not demo or (pending and time.monotonic() < deadline):
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        event = codec.decode(message.value(), "StatusEvent")
        if event["occurred_at"] < since_ms:
            continue  # history from earlier runs
        reason = f" ({event['reason']})" if event["reason"] else ""
        print(
            f"  [status] {event['notification_id'][:8]} {event['channel'] or '-':7} "
            f"{event['status']}{reason}",
            flush=True,
        )
        if event["status"] in FINAL_STATUSES:
            pending.discard(event["notification_id"])
    consumer.close()
    if pending:
        raise SystemExit(f"{len(pending)} samples did not reach a final state")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--demo", action="store_true", help="exit after the samples are done")
    args = parser.parse_args()
    # Everything `make run` starts listens on 127.0.0.1, the seeded SMTP provider included:
    # allow private provider targets for this local stack only (off by default elsewhere).
    os.environ.setdefault("WEBHOOK_ALLOW_PRIVATE_TARGETS", "true")
    settings = get_settings()
    log_dir = REPO / "var" / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    for line in provision(settings).lines():
        print(f"topics: {line}")
    # Default tenant and templates (idempotent: only what changed is written).
    subprocess.run([sys.executable, "-m", "streams.config", "seed"], check=True)

    smtp = Controller(PrintingSmtpHandler(), hostname="127.0.0.1", port=settings.smtp_port)
    smtp.start()
    print(f"SMTP capture listening on 127.0.0.1:{settings.smtp_port}")
    python = sys.executable
    # /metrics, /health and /ready of each worker part and the sink (core/health.py).
    base = int(os.environ.get("RUN_METRICS_BASE_PORT", "9461"))
    ports = {
        name: base + i for i, name in enumerate(("worker", "worker-bulk", "worker-status", "sink"))
    }
    for name, port in ports.items():
        print(f"{name}: http://127.0.0.1:{port}/health, /ready, /metrics")
    children = [
        # One worker per part (streams/runtime/parts.py): a marketing blast never delays a
        # password reset.
        start(
            "worker",
            [python, "-m", "streams", "worker", "-l", "info"],
            log_dir,
            {"WORKER_LANE": "transactional", "METRICS_PORT": str(ports["worker"])},
        ),
        start(
            "worker-bulk",
            [python, "-m", "streams", "worker", "-l", "info"],
            log_dir,
            # Faust's web port would clash with the transactional worker's: none.
            {
                "WORKER_LANE": "bulk",
                "METRICS_PORT": str(ports["worker-bulk"]),
                "WORKER_WEB_PORT": None,
            },
        ),
        start(
            "worker-status",
            [python, "-m", "streams", "worker", "-l", "info"],
            log_dir,
            # Status, batches, receipts, status webhooks: every status event, apart from
            # the transactional lane (streams/runtime/parts.py).
            {
                "WORKER_LANE": "status",
                "METRICS_PORT": str(ports["worker-status"]),
                "WORKER_WEB_PORT": None,
            },
        ),
        start(
            "sink",
            [python, "-m", "connectors.postgres_sink"],
            log_dir,
            {"METRICS_PORT": str(ports["sink"])},
        ),
        start(
            "shim",
            [
                python,
                "-m",
                "uvicorn",
                "api_shim.app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(SHIM_PORT),
                # Several shim processes share the port (they share nothing but Kafka): 2 on
                # 2 cores took 2,338-3,176 req/s against 1,545-1,962 for one (docs/benchmarks.md).
                "--workers",
                os.environ.get("WEB_CONCURRENCY", str(min(4, os.cpu_count() or 1))),
            ],
            log_dir,
            # /metrics sums over the shim's processes (api_shim/metrics.py).
            {"PROMETHEUS_MULTIPROC_DIR": str(fresh_dir(REPO / "var" / "shim-metrics"))},
        ),
    ]
    try:
        wait_for_shim()
        print(f"shim on http://127.0.0.1:{SHIM_PORT} (OpenAPI at /docs, API key {API_KEY!r})")
        print(f"shim: http://127.0.0.1:{SHIM_PORT}/health, /ready, /metrics")
        since_ms = int(time.time() * 1000)
        samples = send_samples()
        follow_statuses(samples, since_ms, args.demo)
        print("all samples reached a final state" if args.demo else "")
    except KeyboardInterrupt:
        print("\nstopping…")
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
        smtp.stop()


if __name__ == "__main__":
    main()
