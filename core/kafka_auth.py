"""Kafka security for Faust and aiokafka clients: the workers' app and their replicated views.

`faust_credentials` is the one translation of the KAFKA_SECURITY_PROTOCOL, KAFKA_SASL_* and
KAFKA_SSL_* settings for Faust (`broker_credentials` of streams.runtime.app);
`aiokafka_config` hands plain aiokafka clients the same credentials through Faust's own
converter, so a worker's views authenticate exactly as its agents do. confluent-kafka
clients: core.kafka_clients.
"""

from __future__ import annotations

import ssl
from typing import Any

from faust.auth import SASLCredentials, SSLCredentials
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import CredentialsT

from core.settings import Settings


def ssl_context(settings: Settings) -> ssl.SSLContext:
    """Verifies the brokers against KAFKA_SSL_CA_FILE (or the system's CAs); presents the
    client certificate when one is set."""
    context = ssl.create_default_context(cafile=settings.kafka_ssl_ca_file or None)
    if settings.kafka_ssl_cert_file and settings.kafka_ssl_key_file:
        context.load_cert_chain(settings.kafka_ssl_cert_file, settings.kafka_ssl_key_file)
    return context


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """Faust's broker_credentials for the settings; None for PLAINTEXT."""
    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return SSLCredentials(ssl_context(settings))
    # Settings guarantees all three are set for a SASL protocol.
    assert settings.kafka_sasl_mechanism and settings.kafka_sasl_username
    assert settings.kafka_sasl_password is not None
    return SASLCredentials(
        username=settings.kafka_sasl_username,
        password=settings.kafka_sasl_password.get_secret_value(),
        mechanism=settings.kafka_sasl_mechanism,
        # With a context the credentials are SASL_SSL, without SASL_PLAINTEXT.
        ssl_context=ssl_context(settings) if protocol == "SASL_SSL" else None,
    )


def aiokafka_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """Keyword arguments for an aiokafka client: brokers and security, then the caller's."""
    auth = credentials_to_aiokafka_auth(faust_credentials(settings))
    return {"bootstrap_servers": settings.kafka_bootstrap_servers, **overrides, **auth}
