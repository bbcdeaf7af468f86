"""KAFKA_SECURITY_* settings: validated, and handed to every Kafka client the code builds.

The call-site check parses the source: every confluent-kafka, aiokafka and Faust client
constructed in streams/, connectors/, api_shim/, scripts/, bench/ and tests/support/ must take
its options from the shared functions, so a client added later without them fails here.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from core.kafka_auth import aiokafka_config, faust_credentials
from core.kafka_clients import admin_config, client_config, consumer_config, producer_config
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SASL_SSL = {
    "kafka_security_protocol": "SASL_SSL",
    "kafka_sasl_mechanism": "SCRAM-SHA-512",
    "kafka_sasl_username": "svc-shim",
    "kafka_sasl_password": "s3cret",
}
LIBRDKAFKA_SASL_SSL = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "svc-shim",
    "sasl.password": "s3cret",
}


def settings(**values: Any) -> Settings:
    # Explicit values win over the environment (and .env) for these fields.
    base: dict[str, Any] = {
        "kafka_security_protocol": "PLAINTEXT",
        "kafka_sasl_mechanism": None,
        "kafka_sasl_username": None,
        "kafka_sasl_password": None,
        "kafka_ssl_ca_file": None,
        "kafka_ssl_cert_file": None,
        "kafka_ssl_key_file": None,
    }
    return Settings(**{**base, **values})


def test_plaintext_is_the_default_and_adds_no_credentials() -> None:
    plain = settings()
    assert producer_config(plain)["security.protocol"] == "PLAINTEXT"
    assert not any(key.startswith(("sasl.", "ssl.")) for key in producer_config(plain))
    assert faust_credentials(plain) is None
    assert aiokafka_config(plain)["security_protocol"] == "PLAINTEXT"


def test_sasl_ssl_reaches_every_confluent_kafka_config() -> None:
    secure = settings(**SASL_SSL, kafka_ssl_ca_file="/etc/kafka/ca.pem")
    expected = {**LIBRDKAFKA_SASL_SSL, "ssl.ca.location": "/etc/kafka/ca.pem"}
    for config in (
        producer_config(secure),
        consumer_config(secure, "g"),
        admin_config(secure),
        client_config(secure, **{"group.id": "g", "fetch.wait.max.ms": 50}),
    ):
        assert config.items() >= expected.items(), config
    # No caller's option can lower the security the settings ask for.
    downgraded = client_config(secure, **{"security.protocol": "PLAINTEXT"})
    assert downgraded["security.protocol"] == "SASL_SSL"


def test_a_client_certificate_is_passed_with_its_key() -> None:
    mtls = settings(
        kafka_security_protocol="SSL",
        kafka_ssl_cert_file="/etc/kafka/client.pem",
        kafka_ssl_key_file="/etc/kafka/client.key",
    )
    assert (
        admin_config(mtls).items()
        >= {
            "security.protocol": "SSL",
            "ssl.certificate.location": "/etc/kafka/client.pem",
            "ssl.key.location": "/etc/kafka/client.key",
        }.items()
    )


def test_sasl_ssl_reaches_faust_and_aiokafka() -> None:
    secure = settings(**SASL_SSL)
    credentials: Any = faust_credentials(secure)
    assert credentials.protocol.value == "SASL_SSL"
    assert credentials.mechanism.value == "SCRAM-SHA-512"
    assert (credentials.username, credentials.password) == ("svc-shim", "s3cret")
    assert credentials.ssl_context is not None
    config = aiokafka_config(secure, group_id=None, security_protocol="PLAINTEXT")
    assert config["security_protocol"] == "SASL_SSL"
    assert config["sasl_mechanism"] == "SCRAM-SHA-512"
    assert config["sasl_plain_username"] == "svc-shim"
    assert config["ssl_context"] is not None
    ssl_only: Any = faust_credentials(settings(kafka_security_protocol="SSL"))
    assert ssl_only.protocol.value == "SSL" and ssl_only.context is not None
    sasl_plaintext: Any = faust_credentials(
        settings(**{**SASL_SSL, "kafka_security_protocol": "SASL_PLAINTEXT"})
    )
    assert sasl_plaintext.protocol.value == "SASL_PLAINTEXT"


def test_the_worker_app_and_its_views_are_built_with_the_credentials() -> None:
    """Imports streams.runtime.app in a fresh interpreter with SASL_SSL in the environment."""
    code = """
import json
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from streams.runtime import config_views
from streams.triggers import agents as triggers
from streams.webhooks import subscriptions as webhook_subscriptions
from streams.runtime.app import app
from core.kafka_auth import aiokafka_config

auth = credentials_to_aiokafka_auth(app.conf.broker_credentials)
views = [*config_views.ALL_VIEWS, triggers._rules_view, webhook_subscriptions.view]
print(json.dumps({
    "app": {k: v for k, v in auth.items() if k != "ssl_context"},
    "app_tls": auth["ssl_context"] is not None,
    "views": [aiokafka_config(view._settings)["sasl_plain_username"] for view in views],
}))
"""
    env = {
        **os.environ,
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA_SASL_USERNAME": "svc-worker",
        "KAFKA_SASL_PASSWORD": "w0rker",
    }
    for name in ("KAFKA_SSL_CA_FILE", "KAFKA_SSL_CERT_FILE", "KAFKA_SSL_KEY_FILE"):
        env.pop(name, None)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["app"] == {
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256",
        "sasl_plain_username": "svc-worker",
        "sasl_plain_password": "w0rker",
    }
    assert seen["app_tls"]
    assert seen["views"] == ["svc-worker"] * len(seen["views"]) and seen["views"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"kafka_security_protocol": "SASL_SSL"},
            "needs KAFKA_SASL_MECHANISM, KAFKA_SASL_PASSWORD",
        ),
        ({**SASL_SSL, "kafka_sasl_mechanism": None}, "needs KAFKA_SASL_MECHANISM"),
        ({**SASL_SSL, "kafka_sasl_password": ""}, "needs KAFKA_SASL_PASSWORD"),
        ({**SASL_SSL, "kafka_security_protocol": "PLAINTEXT"}, "does not use SASL"),
        ({**SASL_SSL, "kafka_security_protocol": "SSL"}, "does not use SASL"),
        ({"kafka_ssl_ca_file": "/ca.pem"}, "does not use TLS"),
        (
            {
                **SASL_SSL,
                "kafka_security_protocol": "SASL_PLAINTEXT",
                "kafka_ssl_ca_file": "/ca.pem",
            },
            "does not use TLS",
        ),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "/c.pem"}, "go together"),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({**SASL_SSL, "kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
    ],
)
def test_inconsistent_settings_are_refused(values: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        settings(**values)


def test_settings_read_from_the_environment_case_insensitively(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "scram-sha-256")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")
    monkeypatch.setenv("KAFKA_SSL_CA_FILE", "")
    loaded = Settings()
    assert security_keys(loaded) == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-256",
        "sasl.username": "svc",
        "sasl.password": "pw",
    }
    assert "pw" not in repr(loaded)


def security_keys(config_settings: Settings) -> dict[str, Any]:
    return {
        k: v
        for k, v in admin_config(config_settings).items()
        if k.startswith(("security.", "sasl.", "ssl."))
    }


# -- every client goes through the shared functions ----------------------------------------

# Constructors of Kafka clients, by the name they are called with.
CLIENTS = {
    "Producer", "Consumer", "AdminClient", "SerializingProducer", "DeserializingConsumer",
    "AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaAdminClient", "AIOKafkaClient",
    "AsyncProducer", "ReplicatedView", "App", "FixedApp",
}  # fmt: skip
# What their options must come from (bench's `_kafka` is client_config with a bootstrap).
SHARED = {
    "client_config", "producer_config", "consumer_config", "admin_config", "aiokafka_config",
    "faust_credentials", "_kafka",
}  # fmt: skip
# Calls whose options are built by their caller (checked at that caller's call site).
WRAPPERS = {("api_shim/producer.py", "Producer")}
SCANNED = ("core", "streams", "connectors", "api_shim", "scripts", "bench", "tests/support")


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def bypassing_calls(source: str, path: str) -> list[str]:
    """`path:line Name(...)` for each client built without a shared function's options."""
    tree = ast.parse(source)
    # A name assigned from a shared call (`config = producer_config(...)`) counts as shared.
    shared_names = {
        target.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)
        and _name(node.value.func) in SHARED
        for target in node.targets if isinstance(target, ast.Name)
    }  # fmt: skip

    def shared(node: ast.AST) -> bool:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Call) and _name(sub.func) in SHARED:
                return True
            if isinstance(sub, ast.Name) and sub.id in shared_names:
                return True
        return False

    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        if name not in CLIENTS or (path, name) in WRAPPERS:
            continue
        if name == "App" and not (
            isinstance(node.func, ast.Attribute) and _name(node.func.value) == "faust"
        ):
            continue
        if name == "ReplicatedView":  # takes the Settings; builds its consumer from them
            continue
        arguments = [*node.args, *(keyword.value for keyword in node.keywords)]
        if not any(shared(argument) for argument in arguments):
            out.append(f"{path}:{node.lineno} {name}(...)")
    return out


def test_every_kafka_client_takes_its_options_from_the_shared_functions() -> None:
    found = []
    for directory in SCANNED:
        for file in sorted((ROOT / directory).rglob("*.py")):
            path = file.relative_to(ROOT).as_posix()
            found += bypassing_calls(file.read_text(), path)
    assert found == [], "clients built without the security settings:\n" + "\n".join(found)


def test_the_call_site_check_catches_a_client_that_bypasses_them() -> None:
    source = """
from confluent_kafka import Consumer, Producer
import faust
from core.kafka_clients import client_config, producer_config
ok = Producer(producer_config(settings))
cfg = producer_config(settings)
also_ok = Producer(cfg)
bad = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "g"})
app = faust.App("id", broker="kafka://x")
"""
    assert bypassing_calls(source, "x.py") == ["x.py:8 Consumer(...)", "x.py:9 App(...)"]
