"""The SSRF guard (connectors/egress.py): which addresses are public, that a connection goes to
the address that was checked (DNS rebinding), and that every connector reaching a network
target is guarded at send time (docs/security.md, HIGH 4 and HIGH 5).

DNS is scripted by injecting a resolver (`Egress(resolver=...)`), not by patching the loop.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from connectors.apprise_connector import AppriseConfig, AppriseConnector
from connectors.egress import Egress, Resolver, guarded_client, is_public
from connectors.errors import ConfigurationError, PermanentDeliveryError
from connectors.fcm import FcmConfig, FcmConnector
from connectors.http import HttpConnector, excerpt
from connectors.registry import PROVIDERS
from connectors.sendgrid import SendGridConfig, SendGridConnector
from connectors.smtp import SmtpConfig, SmtpConnector
from connectors.webhook import WebhookConfig, WebhookConnector, check_target
from streams.webhooks.sender import post
from tests.support.http_peer import HttpPeer, Reply
from tests.support.ports import free_port
from tests.support.provider_cases import TEST_TIMEOUT_SECONDS, message

PUBLIC = "93.184.215.14"


class Rebinding:
    """DNS that answers a public address first and 127.0.0.1 afterwards (a rebinding attack)."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls += 1
        return [PUBLIC] if self.calls == 1 else ["127.0.0.1"]


def resolving_to(*addresses: str) -> Resolver:
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolve


def answering(*addresses: str) -> Egress:
    return Egress(resolver=resolving_to(*addresses))


# -- which addresses are public --------------------------------------------------------------


@pytest.mark.parametrize(
    "address",
    [
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254 (cloud metadata)
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b:1::a00:1",  # local-use NAT64 prefix
        "2002:7f00:1::",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "::127.0.0.1",  # IPv4-compatible
        "::a9fe:a9fe",  # IPv4-compatible 169.254.169.254
        "::ffff:10.0.0.1",  # IPv4-mapped
        "fec0::1",  # site-local
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "ff02::1",
        "127.0.0.1",
        "10.1.2.3",
        "100.64.0.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
    ],
)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address",
    [PUBLIC, "8.8.8.8", "2606:4700:4700::1111", "64:ff9b::808:808", "2002:808:808::1"],
)
def test_public_addresses_pass_including_ipv6_that_embeds_a_public_ipv4(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize(
    "address", ["64:ff9b::a9fe:a9fe", "2002:7f00:1::", "::127.0.0.1", "fec0::1"]
)
async def test_a_name_resolving_to_an_address_python_calls_global_is_refused(address: str) -> None:
    with pytest.raises(PermanentDeliveryError, match="non-public"):
        await check_target("https://hooks.example.com/in", egress=answering(address))


# -- connect to the checked address (DNS rebinding) --------------------------------------------


async def test_a_rebinding_resolver_cannot_redirect_the_webhook_to_a_local_server(
    peer: HttpPeer,
) -> None:
    dns = Rebinding()
    port = peer.url.rsplit(":", 1)[1]
    webhook = WebhookConnector(
        WebhookConfig(secret="whsec_0123456789", timeout_seconds=TEST_TIMEOUT_SECONDS),
        egress=Egress(resolver=dns),
    )
    result = await webhook.deliver(message(channel="webhook", to=f"http://localhost:{port}/hook"))
    await webhook.close()
    # Resolved once, checked, and the connection went to that public address (which does not
    # answer here): never to the second answer, the local server. The name is `localhost`, so
    # any second lookup by the system resolver (the old design) would reach the peer as well.
    assert dns.calls == 1
    assert result.outcome == "failed"
    assert peer.requests == []


async def test_a_rebinding_resolver_cannot_redirect_a_status_webhook(peer: HttpPeer) -> None:
    dns = Rebinding()
    port = peer.url.rsplit(":", 1)[1]
    async with guarded_client(Egress(resolver=dns)) as client:
        answer = await post(client, f"http://localhost:{port}/in", b"{}", {}, timeout_seconds=0.5)
    assert dns.calls == 1 and answer.verdict == "transient"
    assert peer.requests == []


async def test_the_connection_goes_to_the_resolved_address_and_keeps_the_host_header(
    peer: HttpPeer,
) -> None:
    # `peer.test` exists only in this resolver: reaching the peer proves the connection used
    # the checked answer, and the Host header still names the URL's host.
    async with guarded_client(Egress(allow_private=True, resolver=resolving_to("127.0.0.1"))) as c:
        port = peer.url.rsplit(":", 1)[1]
        response = await c.get(f"http://peer.test:{port}/x")
    assert response.status_code == 200
    [request] = peer.requests
    assert request.headers["host"] == f"peer.test:{port}"


def _certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate valid for the name `peer.test` only (not for 127.0.0.1)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "peer.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("peer.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "cert.pem", tmp / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_peer(tmp_path: Path) -> Iterator[tuple[int, Path, list[str]]]:
    cert, key = _certificate(tmp_path)
    server_names: list[str] = []
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.sni_callback = lambda sock, name, ctx: server_names.append(name or "")  # type: ignore[assignment,misc,func-returns-value]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], cert, server_names
    server.shutdown()
    server.server_close()


async def test_tls_still_verifies_the_hostname_when_connecting_to_the_checked_address(
    tls_peer: tuple[int, Path, list[str]],
) -> None:
    port, cert, server_names = tls_peer
    trust = ssl.create_default_context(cafile=str(cert))
    egress = Egress(allow_private=True, resolver=resolving_to("127.0.0.1"))
    async with guarded_client(egress, verify=trust) as client:
        # The certificate names peer.test, not 127.0.0.1: this succeeds only because SNI and
        # the certificate check use the URL's host while the socket goes to the address.
        response = await client.get(f"https://peer.test:{port}/")
        assert response.status_code == 204
        assert server_names == ["peer.test"]
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"https://other.test:{port}/")


# -- every connector is guarded at send time ---------------------------------------------------


def test_every_http_connector_refuses_an_unguarded_client() -> None:
    http_classes = [cls for cls in PROVIDERS.values() if issubclass(cls, HttpConnector)]
    assert len(http_classes) >= 15
    sendgrid = SendGridConfig(api_key="k", sender="a@b.example")
    with pytest.raises(ConfigurationError, match="guarded"):
        SendGridConnector(sendgrid, http=httpx.AsyncClient())


async def test_an_http_provider_base_url_on_loopback_is_refused_at_send(peer: HttpPeer) -> None:
    sendgrid = SendGridConnector(
        SendGridConfig(api_key="k", sender="a@b.example", base_url=peer.url, timeout_seconds=2)
    )
    result = await sendgrid.deliver(message())
    await sendgrid.close()
    assert result.outcome == "failed" and not result.retriable
    assert result.reason is not None and "non-public address 127.0.0.1" in result.reason
    assert peer.requests == []


async def test_fcm_token_uri_on_loopback_is_refused_at_send(peer: HttpPeer) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    fcm = FcmConnector(
        FcmConfig(
            project_id="p",
            client_email="svc@p.example",
            private_key=pem,
            token_uri=peer.url + "/token",
            timeout_seconds=2,
        )
    )
    result = await fcm.deliver(message(channel="push", to="device-token"))
    await fcm.close()
    assert result.outcome == "failed" and not result.retriable
    assert result.reason is not None and "non-public address 127.0.0.1" in result.reason
    assert peer.requests == []


class _Capture:
    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received += 1
        return "250 OK"


async def test_smtp_to_a_private_relay_is_refused_at_send() -> None:
    capture, port = _Capture(), free_port()
    controller = Controller(capture, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        smtp = SmtpConnector(SmtpConfig(host="127.0.0.1", port=port, timeout_seconds=2))
        result = await smtp.deliver(message())
    finally:
        controller.stop()
    assert result.outcome == "failed" and not result.retriable
    assert capture.received == 0


async def test_apprise_to_a_private_host_is_refused_at_send(peer: HttpPeer) -> None:
    url = peer.url.replace("http://", "json://") + "/hook"
    apprise = AppriseConnector(AppriseConfig(urls=[url], timeout_seconds=2))
    result = await apprise.deliver(message(channel="chat"))
    assert result.outcome == "failed" and not result.retriable
    assert result.reason is not None and "urls.0" in result.reason
    assert peer.requests == []


# -- response bodies of non-public peers are not echoed ----------------------------------------


class _Stream:
    """Just enough of httpcore's network stream for `peer_is_public`."""

    def __init__(self, address: str) -> None:
        self.address = address

    def get_extra_info(self, info: str) -> Any:
        return (self.address, 443) if info == "server_addr" else None


@pytest.mark.parametrize(("address", "quoted"), [(PUBLIC, True), ("10.0.0.5", False)])
def test_a_body_is_quoted_in_a_reason_only_from_a_public_peer(address: str, quoted: bool) -> None:
    response = httpx.Response(
        500, text="secret internal answer", extensions={"network_stream": _Stream(address)}
    )
    assert ("secret internal answer" in excerpt(response)) is quoted


async def test_a_local_webhook_receivers_body_is_not_in_the_reason(peer: HttpPeer) -> None:
    peer.reply(Reply(500, body=b"root:x:0:0:root:/root:/bin/bash"))
    webhook = WebhookConnector(
        WebhookConfig(secret="whsec_0123456789", timeout_seconds=2),
        egress=Egress(allow_private=True),
    )
    result = await webhook.deliver(message(channel="webhook", to=peer.url + "/in"))
    await webhook.close()
    assert result.reason == "HTTP 500 from the webhook receiver"


def test_private_targets_are_refused_unless_the_operator_says_otherwise() -> None:
    from core.settings import Settings

    assert Egress().allow_private is False
    assert Settings.model_fields["webhook_allow_private_targets"].default is False
