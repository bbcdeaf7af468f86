"""The shim's /metrics behind several uvicorn processes (issue 15): prometheus-client's
multiprocess mode sums what every process counted, whichever process answers the scrape.

A real shim (`uvicorn --workers 2`) on the real broker: 20 sends over fresh connections (the
kernel spreads them over both processes), then every scrape must say exactly 20.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from core.provision import provision
from core.settings import Settings
from tests.support.pipeline import REPO, wait_until
from tests.support.ports import free_port
from tests.unit.test_shim_models import VALID

pytestmark = pytest.mark.integration

SENT = 20
COUNT = re.compile(
    r'^notifications_shim_requests_total\{method="POST",route="/api/v1/notifications",'
    r'status="202"\} (\S+)$',
    re.M,
)


@pytest.fixture(scope="module")
def shim(
    kafka_bootstrap: str, fresh_database: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path]]:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t-{uuid.uuid4().hex[:12]}.",
        database_url=fresh_database,
    )
    provision(settings)
    metrics_dir = tmp_path_factory.mktemp("shim-metrics")
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": settings.topic_prefix,
        "DATABASE_URL": fresh_database,
        "SHIM_API_KEYS": json.dumps({"key-a": "tenant-a"}),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    argv = [sys.executable, "-m", "uvicorn", "api_shim.app:app", "--port", str(port)]
    log = (metrics_dir.parent / "shim-metrics.log").open("ab")
    proc = subprocess.Popen(
        [*argv, "--workers", "2", "--log-level", "warning"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(ready, 90, "the shim to answer /health")
        yield url, metrics_dir
    finally:
        proc.terminate()
        proc.wait(30)


def test_every_scrape_sums_all_processes(shim: tuple[str, Path]) -> None:
    url, metrics_dir = shim
    # SENT clients at once, each on its own connection: the two processes accept them as
    # they come, so both serve some.
    with ThreadPoolExecutor(SENT) as pool:
        answers = list(pool.map(lambda _: _send(url), range(SENT)))
    assert answers == [202] * SENT
    writers = {p.name.rsplit("_", 1)[1] for p in metrics_dir.glob("counter_*.db")}
    assert len(writers) == 2, f"one process served every request: {writers}"
    counts = []
    for _ in range(10):
        with httpx.Client() as client:  # a new connection per scrape, either process
            found = COUNT.search(client.get(f"{url}/metrics", timeout=5).text)
        assert found is not None
        counts.append(float(found.group(1)))
    assert counts == [SENT] * 10


def _send(url: str) -> int:
    with httpx.Client() as client:
        return client.post(
            f"{url}/api/v1/notifications", json=VALID, headers={"X-API-Key": "key-a"}, timeout=20
        ).status_code
