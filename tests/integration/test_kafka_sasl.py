"""KAFKA_SECURITY_* settings against a real SASL_PLAINTEXT broker with ACLs on.

The broker (tests/support/sasl_kafka.py) has no PLAINTEXT listener for clients. The ACLs are
the ones docs/security.md tells an operator to set: only the shim's principal writes config.*,
workers read it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    ResourcePatternType,
    ResourceType,
)

from core.catalog import TopicCatalog
from core.kafka_clients import admin_config, consumer_config, producer_config
from core.provision import provision
from core.settings import Settings
from streams.runtime.replicated import ReplicatedView
from tests.support.pipeline import Process, wait_until
from tests.support.sasl_kafka import PASSWORDS, SaslKafka

pytestmark = pytest.mark.integration

PREFIX = "sec."
API_KEYS = f"{PREFIX}config.api-keys"


@pytest.fixture(scope="module")
def broker() -> Iterator[SaslKafka]:
    kafka = SaslKafka().start()
    try:
        yield kafka
    finally:
        kafka.stop()


def as_user(
    broker: SaslKafka, user: str, *, mechanism: str = "PLAIN", password: str | None = None
) -> Settings:
    return Settings(
        kafka_bootstrap_servers=broker.bootstrap,
        topic_prefix=PREFIX,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism=mechanism,  # type: ignore[arg-type]
        kafka_sasl_username=user,
        kafka_sasl_password=password or PASSWORDS[user],  # type: ignore[arg-type]
    )


def shim_settings(broker: SaslKafka) -> Settings:
    return as_user(broker, "shim", mechanism="SCRAM-SHA-512")


@pytest.fixture(scope="module")
def provisioned(broker: SaslKafka) -> SaslKafka:
    """Every topic, created through core.provision as the admin; the documented ACLs."""
    admin_settings = as_user(broker, "admin")
    report = provision(admin_settings)
    assert API_KEYS in report.created
    config_topics = (ResourceType.TOPIC, f"{PREFIX}config.", ResourcePatternType.PREFIXED)
    allow = AclPermissionType.ALLOW
    acls = [
        AclBinding(*config_topics, "User:shim", "*", op, allow)
        for op in (AclOperation.WRITE, AclOperation.READ, AclOperation.DESCRIBE)
    ] + [
        AclBinding(*config_topics, "User:worker", "*", op, allow)
        for op in (AclOperation.READ, AclOperation.DESCRIBE)
    ]
    # The workers write the stage topics (so they may hold a producer id), never config.*.
    stage_topics = (ResourceType.TOPIC, f"{PREFIX}notifications.", ResourcePatternType.PREFIXED)
    acls += [
        AclBinding(*stage_topics, "User:worker", "*", op, allow)
        for op in (AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE)
    ]
    acls.append(
        AclBinding(
            ResourceType.GROUP, "*", ResourcePatternType.LITERAL, "User:worker", "*",
            AclOperation.READ, allow,
        )
    )  # fmt: skip
    admin = AdminClient(admin_config(admin_settings))
    for future in admin.create_acls(acls).values():
        future.result()
    # Created on the controller; enforced once the broker's authorizer has loaded them.
    every_acl = AclBindingFilter(
        ResourceType.ANY, None, ResourcePatternType.ANY, None, None,  # type: ignore[arg-type]
        AclOperation.ANY, AclPermissionType.ANY,
    )  # fmt: skip
    wait_until(lambda: len(admin.describe_acls(every_acl).result()) == len(acls), 10, "the ACLs")
    return broker


def produce_one(settings: Settings, topic: str, key: bytes, value: bytes) -> KafkaError | None:
    """The delivery error (None: delivered); errors the client reported go to `errors`."""
    results: list[KafkaError | None] = []
    producer = Producer(producer_config(settings, **{"message.timeout.ms": 3000}))
    producer.produce(topic, key=key, value=value, on_delivery=lambda err, _m: results.append(err))
    producer.flush(10)
    assert len(results) == 1
    return results[0]


def read_all(settings: Settings, topic: str) -> dict[bytes, bytes]:
    consumer = Consumer(consumer_config(settings, f"sec-{uuid.uuid4().hex[:8]}"))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        }
        out: dict[bytes, bytes] = {}
        seen = 0
        while seen < sum(ends.values()):
            message = consumer.poll(5)
            assert message is not None, f"read {seen} of {sum(ends.values())} records"
            assert message.error() is None, message.error()
            out[message.key() or b""] = message.value() or b""
            seen += 1
        return out
    finally:
        consumer.close()


def test_the_shim_principal_writes_config_and_a_worker_reads_it(provisioned: SaslKafka) -> None:
    key = f"acme:{uuid.uuid4().hex[:6]}".encode()
    assert produce_one(shim_settings(provisioned), API_KEYS, key, b'{"scopes": ["send"]}') is None

    worker = as_user(provisioned, "worker")
    assert read_all(worker, API_KEYS)[key] == b'{"scopes": ["send"]}'

    async def replicated() -> dict[str, Any] | None:
        # aiokafka, with the credentials a worker's Faust app gets (core.kafka_auth).
        partitions = TopicCatalog.load(worker)["config.api-keys"].partitions
        view = ReplicatedView(worker, API_KEYS, partitions, json.loads)
        view.start()
        try:
            await asyncio.wait_for(view.wait_ready(), 20)
            return view.get(key.decode())
        finally:
            await view.stop()

    assert asyncio.run(replicated()) == {"scopes": ["send"]}


def test_a_worker_principal_cannot_write_config_topics(provisioned: SaslKafka) -> None:
    error = produce_one(as_user(provisioned, "worker"), API_KEYS, b"acme:forged", b"{}")
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


@pytest.mark.parametrize("who", ["no credentials", "wrong password"])
def test_clients_without_the_right_credentials_are_refused(
    provisioned: SaslKafka, who: str
) -> None:
    if who == "no credentials":
        settings = Settings(kafka_bootstrap_servers=provisioned.bootstrap, topic_prefix=PREFIX)
    else:
        settings = as_user(provisioned, "shim", mechanism="SCRAM-SHA-512", password="guess")
    error = produce_one(settings, API_KEYS, b"acme:forged", b"{}")
    assert error is not None and error.code() == KafkaError._MSG_TIMED_OUT
    # Nothing was written.
    assert b"acme:forged" not in read_all(as_user(provisioned, "admin"), API_KEYS)


def test_a_worker_joins_its_group_through_sasl(provisioned: SaslKafka, tmp_path: Path) -> None:
    """The Faust app (streams.runtime.app's broker_credentials) authenticates: a broker with no
    PLAINTEXT listener would never see it join otherwise."""
    admin = AdminClient(admin_config(as_user(provisioned, "admin")))
    group = as_user(provisioned, "admin").full_app_id

    def members() -> int:
        [future] = admin.describe_consumer_groups([group], request_timeout=5).values()
        try:
            return len(future.result().members)
        except KafkaException:
            return 0

    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": provisioned.bootstrap,
        "TOPIC_PREFIX": PREFIX,
        "KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA_SASL_MECHANISM": "PLAIN",
        "KAFKA_SASL_USERNAME": "admin",
        "KAFKA_SASL_PASSWORD": PASSWORDS["admin"],
    }
    worker = Process(
        "worker", [sys.executable, "-m", "streams", "worker", "-l", "info"], env, tmp_path
    )
    worker.start()
    try:
        wait_until(lambda: not worker.alive() or members() > 0, 60, "the worker to join")
        assert worker.alive(), worker.tail()
    finally:
        worker.stop()
