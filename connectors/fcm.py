"""Push through Firebase Cloud Messaging, HTTP v1 API.

FCM takes an OAuth2 access token, not an API key. We mint it from a Google service account:
an RS256-signed JWT assertion (pyjwt) exchanged at the account's token_uri. The token lives an
hour; it is cached until shortly before it expires and fetched again once if FCM answers 401.

Errors follow FCM's `error.details[].errorCode` (FcmError) rather than the HTTP status alone:
a dead or foreign device token is `InvalidAddressError`, so the deliver stage emits
`device.invalid` and the token can be dropped. See docs/connectors/fcm.md.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import jwt
from pydantic import SecretStr

from connectors.base import DeliveryResult, OutboundMessage
from connectors.egress import Egress
from connectors.errors import (
    InvalidAddressError,
    ProviderRejectedError,
    RetryableDeliveryError,
)
from connectors.http import (
    HttpConnector,
    HttpProviderConfig,
    json_object,
    parse_retry_after,
    raise_for_status,
)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME = 3600  # Google accepts assertions valid for at most one hour
# Fetch a new token this long before the cached one expires, so a request never carries a
# token that lapses in flight.
REFRESH_MARGIN_SECONDS = 60.0
# Keys FCM reserves in `data`; sending one makes FCM reject the whole message.
RESERVED_DATA_KEYS = frozenset({"from", "message_type"})
RESERVED_DATA_PREFIXES = ("google", "gcm")


class FcmConfig(HttpProviderConfig):
    base_url: str = "https://fcm.googleapis.com"
    # The service-account JSON fields FCM needs (the rest of the file is not used).
    project_id: str
    client_email: str
    private_key: SecretStr
    private_key_id: str | None = None
    token_uri: str = "https://oauth2.googleapis.com/token"

    @classmethod
    def from_service_account(cls, info: dict[str, Any], **overrides: Any) -> FcmConfig:
        """Build from a parsed service-account JSON file, ignoring the fields we do not use."""
        fields = ("project_id", "client_email", "private_key", "private_key_id", "token_uri")
        values = {name: info[name] for name in fields if info.get(name)}
        return cls(**{**values, **overrides})


class FcmConnector(HttpConnector[FcmConfig]):
    channel = "push"
    name = "fcm"
    config_model = FcmConfig
    # FCM's default quota: 600,000 messages per minute per project.
    rate_per_sec = 10_000.0
    # The whole message must fit in 4096 bytes; trimming the body leaves room for the title and
    # data, and a notification body longer than this is not shown in full on a device anyway.
    max_body_len = 1000
    # The v1 API has no idempotency key: a retry after a lost answer can notify twice.
    honours_idempotency_key = False

    def __init__(
        self,
        config: FcmConfig,
        *,
        http: httpx.AsyncClient | None = None,
        egress: Egress | None = None,
    ) -> None:
        super().__init__(config, http=http, egress=egress)
        self._token: str | None = None
        self._token_expires_at = 0.0  # time.monotonic()
        # One refresh at a time: concurrent sends with an expired token wait for it.
        self._token_lock = asyncio.Lock()

    async def send(self, message: OutboundMessage) -> DeliveryResult:
        body = build_message(message)
        response = await self._post(body, await self._access_token())
        if response.status_code == 401 and _error_code(response) != "THIRD_PARTY_AUTH_ERROR":
            # The token was revoked or expired early: mint a new one and try once more.
            self._token = None
            response = await self._post(body, await self._access_token())
        if not response.is_success:
            _raise_fcm_error(response)
        # "projects/{project}/messages/{id}": FCM's handle for the accepted message.
        name = json_object(response).get("name")
        return DeliveryResult(
            outcome="sent",
            provider=self.name,
            provider_message_id=name if isinstance(name, str) else None,
        )

    async def _post(self, body: dict[str, Any], token: str) -> httpx.Response:
        path = f"v1/projects/{self.config.project_id}/messages:send"
        return await self.request(
            "POST", self.url(path), json=body, headers={"Authorization": f"Bearer {token}"}
        )

    async def _access_token(self) -> str:
        async with self._token_lock:
            if self._token is None or time.monotonic() >= self._token_expires_at:
                self._token, lifetime = await self._fetch_token()
                self._token_expires_at = time.monotonic() + lifetime - REFRESH_MARGIN_SECONDS
            return self._token

    async def _fetch_token(self) -> tuple[str, float]:
        form = {"grant_type": GRANT_TYPE, "assertion": self._assertion()}
        response = await self.request("POST", self.config.token_uri, data=form)
        if not response.is_success:
            # 4xx: the service account itself is wrong (key, email, disabled); another provider
            # may work. 5xx and 429 are the token service's trouble and transient.
            body = json_object(response)
            detail = f"{body.get('error', '')} {body.get('error_description', '')}".strip()
            reason = f"token endpoint HTTP {response.status_code}: {detail or 'no detail'}"
            if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
                raise ProviderRejectedError(reason)
            raise RetryableDeliveryError(
                reason, retry_after=parse_retry_after(response.headers.get("Retry-After"))
            )
        body = json_object(response)
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise ProviderRejectedError("token endpoint answered without an access_token")
        return token, float(body.get("expires_in") or ASSERTION_LIFETIME)

    def _assertion(self) -> str:
        now = int(time.time())
        claims = {
            "iss": self.config.client_email,
            "scope": SCOPE,
            "aud": self.config.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
        }
        headers = {"kid": self.config.private_key_id} if self.config.private_key_id else None
        try:
            return jwt.encode(
                claims,
                self.config.private_key.get_secret_value(),
                algorithm="RS256",
                headers=headers,
            )
        except (ValueError, TypeError, jwt.PyJWTError) as exc:
            # The library's message could quote the key; name only the field.
            raise ProviderRejectedError(
                "service account private_key is not a usable RSA key"
            ) from exc


def build_message(message: OutboundMessage) -> dict[str, Any]:
    """The v1 `message` for one device token."""
    notification: dict[str, Any] = {"body": message.text}
    if message.subject:
        notification["title"] = message.subject
    if message.media_urls:
        notification["image"] = message.media_urls[0]
    fcm: dict[str, Any] = {
        "token": message.to,
        "notification": notification,
        "data": _string_data(message),
    }
    if message.priority in ("high", "critical"):
        # Wakes a dozing Android device; APNs 10 means deliver now rather than when convenient.
        fcm["android"] = {"priority": "high"}
        fcm["apns"] = {"headers": {"apns-priority": "10"}}
    return {"message": fcm}


def _string_data(message: OutboundMessage) -> dict[str, str]:
    """FCM's `data` is a map of strings: other JSON values are sent JSON-encoded."""
    data = {
        key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in message.data.items()
        if key not in RESERVED_DATA_KEYS and not key.lower().startswith(RESERVED_DATA_PREFIXES)
    }
    data["notification_id"] = message.notification_id
    return data


def _error(response: httpx.Response) -> dict[str, Any]:
    error = json_object(response).get("error")
    return error if isinstance(error, dict) else {}


def _details(response: httpx.Response) -> list[dict[str, Any]]:
    details = _error(response).get("details")
    return [item for item in details if isinstance(item, dict)] if isinstance(details, list) else []


def _error_code(response: httpx.Response) -> str | None:
    for item in _details(response):
        if str(item.get("@type", "")).endswith("google.firebase.fcm.v1.FcmError"):
            code = item.get("errorCode")
            return code if isinstance(code, str) else None
    return None


def _about_token(response: httpx.Response) -> bool:
    """Whether an INVALID_ARGUMENT names the registration token rather than the content."""
    if "registration token" in str(_error(response).get("message", "")).lower():
        return True
    for item in _details(response):
        for violation in item.get("fieldViolations") or []:
            if isinstance(violation, dict) and violation.get("field") == "message.token":
                return True
    return False


def _raise_fcm_error(response: httpx.Response) -> None:
    code = _error_code(response)
    text = f"FCM {code} (HTTP {response.status_code}): {_error(response).get('message', '')}"
    if code == "UNREGISTERED":
        raise InvalidAddressError(f"{text} (the app was uninstalled or the token expired)")
    if code == "SENDER_ID_MISMATCH":
        raise InvalidAddressError(f"{text} (the token belongs to another Firebase project)")
    if code == "INVALID_ARGUMENT" and _about_token(response):
        raise InvalidAddressError(text)
    if code == "THIRD_PARTY_AUTH_ERROR":
        # FCM's APNs certificate or Web Push key for the app was rejected.
        raise ProviderRejectedError(text)
    # Everything else takes the shared HTTP mapping. QUOTA_EXCEEDED (429), UNAVAILABLE (503)
    # and INTERNAL (500) become retriable there, with FCM's Retry-After when it sends one.
    raise_for_status(response, what="from FCM")
