"""Integration fixtures: the real broker and Postgres started by scripts/test.sh."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from tests.support.pipeline import Pipeline
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration


def _required_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        pytest.fail(f"{name} is not set: run the suite with `make test` (scripts/test.sh)")
    return value


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    return _required_env("TEST_KAFKA_BOOTSTRAP")


@pytest.fixture(scope="session")
def postgres_url() -> str:
    return _required_env("TEST_DATABASE_URL")


@pytest.fixture(scope="module")
def fresh_database(postgres_url: str) -> Iterator[str]:
    """A new Postgres database per test module, dropped afterwards."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpCapture]:
    capture = SmtpCapture().start()
    yield capture
    capture.stop()


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="module")
def pipeline(
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    fresh_database: str,
    smtp: SmtpCapture,
    log_dir: Path,
) -> Iterator[Pipeline]:
    """The whole pipeline (worker, sink, shim) on uuid-prefixed topics, one per module; a
    module's PIPELINE_ENV (a dict) is added to its processes' environment."""
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        extra_env=getattr(request.module, "PIPELINE_ENV", None),
    )
    pipe.start(shim=True)
    try:
        yield pipe
    finally:
        pipe.stop()
        if os.environ.get("SHOW_WORKER_LOG"):
            print(pipe.worker.tail(200))


def now_ms() -> int:
    return int(time.time() * 1000)
