"""core/health.py over real HTTP: liveness follows the loop, readiness names its checks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from core.health import Health, Heartbeat, LoopHeartbeat, serve
from tests.support.ports import free_port


def served(health: Health) -> Iterator[str]:
    port = free_port()
    server = serve(health, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    running = asyncio.new_event_loop()
    thread = threading.Thread(target=running.run_forever, daemon=True)
    thread.start()
    yield running
    running.call_soon_threadsafe(running.stop)
    thread.join(5)
    running.close()


def test_a_blocked_event_loop_is_not_live_and_not_ready(loop: asyncio.AbstractEventLoop) -> None:
    health = Health(LoopHeartbeat(loop, every=0.05).alive, stall_seconds=0.3)
    for url in served(health):
        assert httpx.get(f"{url}/health").json() == {"status": "ok", "checks": {"loop": "ok"}}
        assert httpx.get(f"{url}/ready").status_code == 200
        loop.call_soon_threadsafe(time.sleep, 1.5)  # a template bomb on the worker's loop
        time.sleep(0.5)
        stalled = httpx.get(f"{url}/health", timeout=5)
        assert stalled.status_code == 503 and stalled.json()["status"] == "stalled"
        assert httpx.get(f"{url}/ready", timeout=5).status_code == 503
        time.sleep(1.2)
        assert httpx.get(f"{url}/health").status_code == 200


def test_a_silent_heartbeat_is_not_live() -> None:
    beat = Heartbeat()
    health = Health(beat.alive, stall_seconds=0.2)
    for url in served(health):
        assert httpx.get(f"{url}/health").status_code == 200
        time.sleep(0.3)
        body = httpx.get(f"{url}/health").json()
        assert body["status"] == "stalled" and "no turn of the loop" in body["checks"]["loop"]
        beat.beat()
        assert httpx.get(f"{url}/health").status_code == 200


def test_readiness_names_the_failing_checks_and_survives_a_raising_one() -> None:
    state: dict[str, str | None] = {"database": "writes fail (OperationalError); retrying"}

    def broken() -> str | None:
        raise RuntimeError("secret host name")

    health = Health(
        Heartbeat().alive,
        stall_seconds=60,
        checks={"database": lambda: state["database"], "partitions": lambda: None},
    )
    for url in served(health):
        answer = httpx.get(f"{url}/ready")
        assert answer.status_code == 503
        assert answer.json() == {
            "status": "not_ready",
            "checks": {
                "loop": "ok",
                "database": "writes fail (OperationalError); retrying",
                "partitions": "ok",
            },
        }
        state["database"] = None
        assert httpx.get(f"{url}/ready").json()["status"] == "ready"
        health.checks["odd"] = broken
        odd = httpx.get(f"{url}/ready")
        assert odd.status_code == 503 and odd.json()["checks"]["odd"] == "failed (RuntimeError)"
        assert "secret host name" not in odd.text
        assert httpx.get(f"{url}/health").status_code == 200  # liveness ignores checks


def test_metrics_are_served_and_other_paths_are_404() -> None:
    for url in served(Health(Heartbeat().alive, stall_seconds=60)):
        metrics = httpx.get(f"{url}/metrics")
        assert metrics.status_code == 200 and "text/plain" in metrics.headers["content-type"]
        assert "python_info" in metrics.text or "process_" in metrics.text
        assert httpx.get(f"{url}/nope").status_code == 404
