"""A throwaway single-node Kafka whose only client listener is SASL_PLAINTEXT, with ACLs on.

Started from the same jars as scripts/kafka.sh (fetched by scripts/test.sh), with its own
ports and data dir, for tests of the KAFKA_SECURITY_* settings. Users (JAAS inline):

    admin   PLAIN           super user (and the broker's own inter-broker identity)
    worker  PLAIN           no rights until a test grants them
    shim    SCRAM-SHA-512   no rights until a test grants them
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
PASSWORDS = {"admin": "admin-secret", "worker": "worker-secret", "shim": "shim-secret"}


def _libs() -> Path:
    pom = (ROOT / "infra/kafka/pom.xml").read_text()
    match = re.search(r"<kafka.version>(.*?)</kafka.version>", pom)
    assert match, "no <kafka.version> in infra/kafka/pom.xml"
    cache = Path(os.environ.get("NOTIF_CACHE", Path.home() / ".cache/notifications"))
    libs = cache / f"kafka-{match.group(1)}" / "libs"
    if not (libs / ".complete").exists():
        subprocess.run([str(ROOT / "scripts/kafka.sh"), "fetch"], check=True)
    return libs


def _properties(port: int, controller_port: int, data: Path) -> str:
    plain_users = " ".join(f'user_{name}="{PASSWORDS[name]}"' for name in ("admin", "worker"))
    return f"""\
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=SASL_PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=SASL_PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=SASL_PLAINTEXT:SASL_PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=SASL_PLAINTEXT
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=PLAIN
listener.name.sasl_plaintext.plain.sasl.jaas.config=\
org.apache.kafka.common.security.plain.PlainLoginModule required \
username="admin" password="{PASSWORDS["admin"]}" {plain_users};
listener.name.sasl_plaintext.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
# ANONYMOUS: the broker reaching its own controller over the loopback CONTROLLER listener.
super.users=User:admin;User:ANONYMOUS
allow.everyone.if.no.acl.found=false
log.dirs={data}
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
"""


class SaslKafka:
    def __init__(self) -> None:
        self.port = free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="sasl-kafka-", dir=ROOT / "var"))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> SaslKafka:
        libs = _libs()
        props = self.dir / "server.properties"
        props.write_text(_properties(self.port, self.controller_port, self.dir / "data"))
        log4j = ROOT / "infra/kafka/log4j.properties"
        java = ["java", f"-Dlog4j.configuration=file:{log4j}", f"-Dkafka.logs.dir={self.dir}"]
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        scram = f"SCRAM-SHA-512=[name=shim,password={PASSWORDS['shim']}]"
        log = (self.dir / "kafka.log").open("ab")
        subprocess.run(
            [*java, "-cp", f"{libs}/*", "kafka.tools.StorageTool", "format",
             f"--cluster-id={cluster_id}", "-c", str(props), "--add-scram", scram],
            check=True, stdout=log, stderr=log,
        )  # fmt: skip
        self._process = subprocess.Popen(
            [*java, "-Xmx256m", "-Xms64m", "-cp", f"{libs}/*", "kafka.Kafka", str(props)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the SASL broker exited; see {self.dir / 'kafka.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the SASL broker did not listen within {timeout}s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
            self._process = None
        shutil.rmtree(self.dir, ignore_errors=True)
