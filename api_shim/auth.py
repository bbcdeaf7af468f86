"""Who is calling, and what they may do.

Three kinds of caller (docs/api.md):

- **API keys** (`X-API-Key: nk_<key_id>_<secret>`), per tenant, with scopes `send`, `read`,
  `admin`. Created through the admin API and kept on config.api-keys as the SHA-256 of the
  secret only (the secret is random and long, so a plain hash cannot be brute-forced and is
  cheap to check per request). Bootstrap keys from `SHIM_API_KEYS` have every scope.
- **Users** (`Authorization: Bearer <JWT>`), from the tenant's OIDC provider: the signature is
  checked against the JWKS, and issuer, audience and expiry are required. The user id is `sub`,
  the tenant a claim (`SHIM_JWT_TENANT_CLAIM`), which must name a known tenant (on
  config.tenants, or one with a SHIM_API_KEYS key); a role `admin` gives the admin scope,
  `viewer` read-only access.
- **The platform operator** (`Authorization: Bearer <SHIM_OPERATOR_TOKEN>`), only for
  /api/v1/platform (creating tenants).

Every caller is then rate limited per tenant and per key or user (429 with Retry-After).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import jwt
from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from api_shim.errors import Forbidden, TooManyRequests, Unauthorized
from api_shim.jwks import JwksCache, JwksUnavailable, UnknownKey
from core.rate_limits import RateLimits

Scope = Literal["send", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("send", "read", "admin")
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "admin": frozenset({"send", "read", "admin"}),
    "viewer": frozenset({"read"}),
}
KEY_PREFIX = "nk_"
# Wrong operator tokens per client address: a burst of OPERATOR_FAILURE_BURST, then one a second.
OPERATOR_FAILURES_PER_SEC = 1.0
OPERATOR_FAILURE_BURST = 5.0

log = logging.getLogger(__name__)

_api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="A tenant's API key, `nk_<key_id>_<secret>` (see POST /api/v1/admin/api-keys).",
)
_bearer = HTTPBearer(
    auto_error=False,
    description="A user's OIDC access token (JWT), or the platform operator's token.",
)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `subject` is the key id, or the user id for a user."""

    tenant_id: str
    kind: Literal["api_key", "user"]
    subject: str
    scopes: frozenset[str]
    roles: frozenset[str] = field(default_factory=frozenset)

    @property
    def user_id(self) -> str | None:
        return self.subject if self.kind == "user" else None


# -- API keys ----------------------------------------------------------------------------------


def new_api_key() -> tuple[str, str, str]:
    """(key_id, the full key to show once, the SHA-256 of its secret to store)."""
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return key_id, f"{KEY_PREFIX}{key_id}_{secret}", secret_sha256(secret)


def secret_sha256(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def split_api_key(presented: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    if not presented.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = presented[len(KEY_PREFIX) :].partition("_")
    return (key_id, secret) if sep and key_id and secret else None


def _bootstrap_tenant(keys: dict[str, str], presented: str) -> str | None:
    """The tenant of a SHIM_API_KEYS key, comparing against every key in constant time."""
    tenant = None
    for key, key_tenant in keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            tenant = key_tenant
    return tenant


def principal_for_key(request: Request, presented: str) -> Principal:
    state = request.app.state
    parts = split_api_key(presented)
    if parts is not None:
        key_id, secret = parts
        record = state.api_keys.get(key_id)
        if record is not None and hmac.compare_digest(
            record["secret_sha256"], secret_sha256(secret)
        ):
            if record["revoked_at"] is not None:
                raise Unauthorized("this API key has been revoked")
            return Principal(
                tenant_id=record["tenant_id"],
                kind="api_key",
                subject=key_id,
                scopes=frozenset(record["scopes"]),
            )
    tenant = _bootstrap_tenant(state.settings.shim_api_keys, presented)
    if tenant is None:
        raise Unauthorized("unknown API key")
    return Principal(
        tenant_id=tenant,
        kind="api_key",
        subject=f"bootstrap:{hashlib.sha256(presented.encode()).hexdigest()[:12]}",
        scopes=frozenset(SCOPES),
    )


# -- JWT ---------------------------------------------------------------------------------------


class JwtConfigError(ValueError):
    """The JWT settings cannot be used safely: the shim refuses to start."""


class JwtVerifier:
    """Checks bearer JWTs against the issuer's JWKS (api_shim.jwks: cached, refetched at most
    once per cooldown however many unknown key ids tokens name)."""

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        algorithms: list[str],
        tenant_claim: str,
        roles_claim: str,
        leeway: float,
    ) -> None:
        self.jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._algorithms = algorithms
        self._tenant_claim = tenant_claim
        self._roles_claim = roles_claim
        self._leeway = leeway

    def _key(self, token: str) -> tuple[Any, str]:
        """The issuer's key the token names, and the one algorithm that key verifies."""
        try:
            header = jwt.get_unverified_header(token)
        except Exception as exc:  # PyJWT raises more than InvalidTokenError on some garbage
            raise Unauthorized("the bearer token is not a valid JWT") from exc
        kid, alg = header.get("kid"), header.get("alg")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("the bearer token names no signing key (kid)")
        try:
            jwk = self.jwks.key(kid)
        except JwksUnavailable as exc:
            raise Unauthorized("the token issuer's keys (JWKS) are unreachable") from exc
        except UnknownKey as exc:
            raise Unauthorized("the bearer token is not signed by a key of the issuer") from exc
        # The algorithm is the key's (its JWK `alg`, or its type's), never the token's choice:
        # an ES256 header over an RSA key is refused here, not a TypeError deep in PyJWT.
        if alg != jwk.algorithm_name or alg not in self._algorithms:
            raise Unauthorized("the bearer token's algorithm (alg) is not its key's")
        return jwk.key, alg

    def principal(self, token: str) -> Principal:
        """The user the token names; raises Unauthorized saying what is wrong (never why
        exactly a signature failed: that is no business of the caller's)."""
        key, alg = self._key(token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "sub", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthorized("the bearer token has expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthorized("the bearer token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthorized("the bearer token is from another issuer") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthorized(f"the bearer token has no {exc.claim!r} claim") from exc
        except jwt.InvalidSignatureError as exc:
            raise Unauthorized("the bearer token's signature is invalid") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthorized(f"the bearer token is invalid: {exc}") from exc
        except Exception as exc:  # whatever else a hostile token makes PyJWT raise: never a 500
            log.info("bearer token refused: %s: %s", type(exc).__name__, exc)
            raise Unauthorized("the bearer token cannot be verified") from exc
        tenant = claims.get(self._tenant_claim)
        if not isinstance(tenant, str) or not tenant:
            raise Unauthorized(f"the bearer token has no {self._tenant_claim!r} claim")
        raw_roles = claims.get(self._roles_claim) or []
        roles = (
            frozenset(r for r in raw_roles if isinstance(r, str))
            if isinstance(raw_roles, list)
            else frozenset()
        )
        scopes = frozenset().union(*(ROLE_SCOPES.get(role, frozenset()) for role in roles))
        return Principal(
            tenant_id=tenant, kind="user", subject=str(claims["sub"]), scopes=scopes, roles=roles
        )


def jwt_verifier(settings: Any) -> JwtVerifier | None:
    """The verifier for SHIM_JWT_*, or None without a JWKS; JwtConfigError if unsafe."""
    if not settings.shim_jwt_jwks_url:
        return None
    # Without both, any token the issuer signs for any other application (another audience)
    # or any issuer sharing the JWKS would be accepted.
    missing = [
        name
        for name, value in (
            ("SHIM_JWT_ISSUER", settings.shim_jwt_issuer),
            ("SHIM_JWT_AUDIENCE", settings.shim_jwt_audience),
        )
        if not value
    ]
    if missing:
        raise JwtConfigError(
            f"SHIM_JWT_JWKS_URL is set, so {' and '.join(missing)} must be set too: "
            "tokens are only accepted from one issuer for this audience"
        )
    return JwtVerifier(
        JwksCache(
            settings.shim_jwt_jwks_url, refetch_seconds=settings.shim_jwt_jwks_refetch_seconds
        ),
        issuer=settings.shim_jwt_issuer,
        audience=settings.shim_jwt_audience,
        algorithms=list(settings.shim_jwt_algorithms),
        tenant_claim=settings.shim_jwt_tenant_claim,
        roles_claim=settings.shim_jwt_roles_claim,
        leeway=settings.shim_jwt_leeway_seconds,
    )


# -- dependencies ------------------------------------------------------------------------------


def _rate_limit(request: Request, principal: Principal) -> None:
    settings = request.app.state.settings
    limits: RateLimits = request.app.state.rate_limits
    for name, rate, what in (
        (f"tenant:{principal.tenant_id}", settings.shim_rate_limit_per_tenant, "tenant"),
        (f"{principal.kind}:{principal.subject}", settings.shim_rate_limit_per_key, principal.kind),
    ):
        wait = limits.take(name, rate)
        if wait > 0:
            who = "API key" if what == "api_key" else what
            raise TooManyRequests(f"too many requests for this {who}; retry later", wait)


def _has_bootstrap_key(request: Request, tenant_id: str) -> bool:
    return tenant_id in request.app.state.settings.shim_api_keys.values()


async def authenticate(
    request: Request,
    api_key: Annotated[str | None, Depends(_api_key_header)],
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if api_key:
        principal = principal_for_key(request, api_key)
    elif bearer is not None:
        verifier: JwtVerifier | None = request.app.state.jwt
        if verifier is None:
            raise Unauthorized("bearer tokens are not accepted here (no JWKS is configured)")
        principal = await run_in_threadpool(verifier.principal, bearer.credentials)
    else:
        raise Unauthorized("an X-API-Key header or an Authorization: Bearer token is required")
    tenant = request.app.state.views["config.tenants"].get(principal.tenant_id)
    known = tenant is not None or _has_bootstrap_key(request, principal.tenant_id)
    if principal.kind == "user" and not known:
        # The issuer may serve more than our tenants (or let users edit the claim): a token
        # counts only for a tenant the operator created (config.tenants) or gave a key.
        raise Unauthorized("the bearer token names a tenant this service does not know")
    if tenant is not None and not tenant["enabled"]:
        # The operator disabled the tenant: its keys and users are refused until re-enabled.
        raise Forbidden(f"tenant {principal.tenant_id!r} is disabled")
    _rate_limit(request, principal)
    return principal


Caller = Annotated[Principal, Depends(authenticate)]


def require_scope(principal: Principal, scope: Scope) -> None:
    if scope not in principal.scopes:
        raise Forbidden(f"this endpoint needs the {scope!r} scope")


def requires(scope: Scope) -> Any:
    """A dependency: the caller, if it has `scope` (403 otherwise)."""

    # async, as every dependency here: FastAPI runs a plain `def` one in a worker thread,
    # a thread hop per request for a set lookup (docs/benchmarks.md).
    async def check(principal: Caller) -> Principal:
        require_scope(principal, scope)
        return principal

    return Depends(check)


async def _user(principal: Caller) -> Principal:
    if principal.kind != "user":
        raise Forbidden("user endpoints need a user's bearer token, not an API key")
    return principal


Sender = Annotated[Principal, requires("send")]
Reader = Annotated[Principal, requires("read")]
Admin = Annotated[Principal, requires("admin")]
User = Annotated[Principal, Depends(_user)]


async def operator(
    request: Request, bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """The platform operator's token (SHIM_OPERATOR_TOKEN), for /api/v1/platform only.

    Rate limited like an API key. Wrong tokens are also limited per client address
    (OPERATOR_FAILURE_BURST, then OPERATOR_FAILURES_PER_SEC): once an address is over,
    every token from it gets 429 without being compared, so the answer leaks nothing and
    the token cannot be guessed at line rate. A request without a bearer is not a guess."""
    settings = request.app.state.settings
    limits: RateLimits = request.app.state.rate_limits
    failures: RateLimits = request.app.state.operator_failures
    expected = settings.shim_operator_token
    if expected is None:
        raise Forbidden("platform endpoints are disabled (SHIM_OPERATOR_TOKEN is not set)")
    if bearer is None:
        raise Unauthorized("the platform operator's bearer token is required")
    address = request.client.host if request.client else "?"
    wait = failures.peek(address)
    if wait > 0:
        raise TooManyRequests("too many wrong operator tokens from this address", wait)
    if not hmac.compare_digest(bearer.credentials.encode(), expected.get_secret_value().encode()):
        failures.take(address, OPERATOR_FAILURES_PER_SEC)
        raise Unauthorized("the platform operator's bearer token is required")
    wait = limits.take("operator", settings.shim_rate_limit_per_key)
    if wait > 0:
        raise TooManyRequests("too many requests for the operator; retry later", wait)


Operator = Annotated[None, Depends(operator)]

# Kept for routes written before scopes: any caller of a tenant with the send scope.
Tenant = Sender
