"""An OIDC issuer for tests: an RSA key, its JWKS served by a local HTTP peer, and tokens.

    with Issuer() as issuer:
        settings = Settings(..., **issuer.settings())
        token = issuer.token(sub="user-1", tenant_id="tenant-a", roles=["viewer"])
        client.get("/api/v1/me/notifications", headers=issuer.bearer(token))

`token(...)` takes overrides for any claim (exp in the past, another aud), `key=` to sign
with a key the JWKS does not hold (a forged token) and `algorithm=` for another header `alg`.
`serve(...)` changes the keys the JWKS holds (rotation).
"""

from __future__ import annotations

import json
import time
from types import TracebackType
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from tests.support.http_peer import HttpPeer, Reply

ISSUER = "https://issuer.test/"
AUDIENCE = "notifications-api"


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class Issuer:
    def __init__(self, kid: str = "test-key-1") -> None:
        self.kid = kid
        self.key = new_key()
        self.peer = HttpPeer()
        self.serve(self.jwk())

    def jwk(self) -> dict[str, Any]:
        """This issuer's public key as a JWK."""
        jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return jwk

    def serve(self, *jwks: dict[str, Any]) -> None:
        """The JWKS answers these keys from now on."""
        self.peer.default = Reply(200, json={"keys": list(jwks)})

    def jwks_fetches(self) -> int:
        return len(self.peer.requests)

    @property
    def jwks_url(self) -> str:
        return f"{self.peer.url}/.well-known/jwks.json"

    def settings(self) -> dict[str, Any]:
        """Settings fields that point the shim at this issuer."""
        return {
            "shim_jwt_jwks_url": self.jwks_url,
            "shim_jwt_issuer": ISSUER,
            "shim_jwt_audience": AUDIENCE,
        }

    def token(
        self,
        *,
        sub: str = "user-1",
        tenant_id: str | None = "tenant-a",
        roles: list[str] | None = None,
        ttl: float = 300,
        key: Any = None,
        kid: str | None = None,
        algorithm: str = "RS256",
        **claims: Any,
    ) -> str:
        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": sub,
            "iat": now,
            "exp": now + int(ttl),
            "roles": roles or [],
        }
        if tenant_id is not None:
            payload["tenant_id"] = tenant_id
        payload.update(claims)
        return jwt.encode(
            payload, key or self.key, algorithm=algorithm, headers={"kid": kid or self.kid}
        )

    @staticmethod
    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def __enter__(self) -> Issuer:
        self.peer.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.peer.stop()
