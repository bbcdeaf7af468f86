"""topics.yaml provisioning on the real broker, and workers refusing to run without topics."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

from core.catalog import TopicCatalog, every_group_catalog
from core.provision import existing_partitions, provision
from core.settings import Settings
from tests.support.pipeline import REPO

pytestmark = pytest.mark.integration


def fresh_settings(bootstrap: str) -> Settings:
    return Settings(kafka_bootstrap_servers=bootstrap, topic_prefix=f"p{uuid.uuid4().hex[:8]}.")


def test_provision_creates_every_topic_as_declared_then_is_idempotent(kafka_bootstrap: str) -> None:
    settings = fresh_settings(kafka_bootstrap)
    catalog = every_group_catalog(settings)  # both lanes' worker groups
    first = provision(settings)
    assert sorted(first.created) == sorted(spec.physical_name for spec in catalog)
    assert settings.topic("notifications-bulk-delivered-changelog") in first.created

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    partitions = existing_partitions(admin)
    for spec in catalog:
        assert partitions[spec.physical_name] == spec.partitions
    profiles = settings.topic("users.profiles")
    configs = admin.describe_configs([ConfigResource("topic", profiles)])
    [entries] = [future.result() for future in configs.values()]
    assert entries["cleanup.policy"].value == "compact"

    second = provision(settings)
    assert second.created == [] and len(second.present) == len(first.created)


def test_drift_is_reported_and_nothing_is_deleted(kafka_bootstrap: str) -> None:
    settings = fresh_settings(kafka_bootstrap)
    name = TopicCatalog.load(settings).name("notifications.requests")
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([NewTopic(name, 2, 1)])[name].result()

    report = provision(settings)
    assert report.drift == [f"{name}: 2 partitions, topics.yaml says 4"]
    assert existing_partitions(admin)[name] == 2  # reported, not altered


def test_check_mode_lists_missing_topics(kafka_bootstrap: str) -> None:
    settings = fresh_settings(kafka_bootstrap)
    report = provision(settings, create=False)
    assert len(report.missing) == len(every_group_catalog(settings))
    assert report.created == []


def test_worker_refuses_to_start_while_topics_are_missing(kafka_bootstrap: str) -> None:
    settings = fresh_settings(kafka_bootstrap)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "TOPIC_PREFIX": settings.topic_prefix,
    }
    result = subprocess.run(
        [sys.executable, "-m", "streams", "worker"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "refusing to start: these topics are missing" in result.stderr
    assert settings.topic("notifications.requests") in result.stderr
    assert "python -m core.provision" in result.stderr
