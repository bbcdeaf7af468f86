"""confluent-kafka client configuration shared by the shim, the sink and the tools.

Every confluent-kafka Producer, Consumer and AdminClient is built from `client_config` (or the
producer/consumer/admin presets on top of it), so the security settings reach all of them:
`security_config` is the one translation of KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and
KAFKA_SSL_* into librdkafka's keys (tests/unit/test_kafka_security.py checks every call site).
Faust and aiokafka clients get theirs from core.kafka_auth.

The partitioner is murmur2, the Java client's default and what Faust (aiokafka) uses, so a
key lands on the same partition whoever produced it. Co-partitioning of users.profiles,
users.preferences and the stage topics depends on it: upstream producers must use it too.
"""

from __future__ import annotations

from typing import Any

from core.settings import Settings


def security_config(settings: Settings) -> dict[str, str]:
    """librdkafka's security.protocol, sasl.* and ssl.* keys for the settings."""
    config: dict[str, str] = {"security.protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL_"):
        # Settings guarantees all three are set for a SASL protocol.
        assert settings.kafka_sasl_mechanism and settings.kafka_sasl_username
        assert settings.kafka_sasl_password is not None
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username
        config["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    if settings.kafka_ssl_ca_file:
        config["ssl.ca.location"] = settings.kafka_ssl_ca_file
    if settings.kafka_ssl_cert_file and settings.kafka_ssl_key_file:
        config["ssl.certificate.location"] = settings.kafka_ssl_cert_file
        config["ssl.key.location"] = settings.kafka_ssl_key_file
    return config


def client_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Brokers and security, then the caller's options. The security keys come last: no
    caller can (by accident) connect with less than the settings ask for."""
    return {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        **overrides,
        **security_config(settings),
    }


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    return client_config(
        settings,
        **{
            "enable.idempotence": True,
            "acks": "all",
            "partitioner": "murmur2_random",
            "linger.ms": 5,
            "compression.type": "lz4",
            **overrides,
        },
    )


def consumer_config(settings: Settings, group_id: str, **overrides: Any) -> dict[str, Any]:
    return client_config(
        settings,
        **{
            "group.id": group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            **overrides,
        },
    )


def admin_config(settings: Settings) -> dict[str, Any]:
    return client_config(settings)
