"""Per-tenant provider secrets sealed with AES-GCM inside ProviderConfig events.

The key comes from the environment (PROVIDER_SECRETS_KEY, base64 of 32 bytes), never from
Kafka. A sealed blob is bound to its tenant and provider id (the AES-GCM associated data),
so copying it into another tenant's configuration does not open. Blobs name their key id,
so keys rotate: seal with the current key, open with it or any of PROVIDER_SECRETS_OLD_KEYS.

    blob = 0x01 | len(key id) | key id | 12-byte nonce | ciphertext+tag (of JSON secrets)
"""

from __future__ import annotations

import base64
import binascii
import json
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
NONCE_LEN = 12


class SealingError(Exception):
    """A key is missing or malformed, or a blob does not open (wrong key, tenant or tampering)."""


def decode_key(encoded: str) -> bytes:
    try:
        key = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SealingError("a provider secrets key must be base64") from exc
    if len(key) != 32:
        raise SealingError(f"a provider secrets key must be 32 bytes, got {len(key)}")
    return key


def new_key() -> str:
    """A fresh base64 key for PROVIDER_SECRETS_KEY."""
    return base64.b64encode(AESGCM.generate_key(bit_length=256)).decode()


def _aad(tenant_id: str, provider_id: str) -> bytes:
    return f"{tenant_id}:{provider_id}".encode()


class SecretBox:
    def __init__(self, current_key_id: str, keys: dict[str, bytes]) -> None:
        if current_key_id not in keys:
            raise SealingError(f"no key with id {current_key_id!r}")
        self.current_key_id = current_key_id
        self._keys = keys

    @classmethod
    def from_settings(
        cls, key: str | None, key_id: str, old_keys: dict[str, str] | None = None
    ) -> SecretBox | None:
        """The box for the configured keys, or None when no key is configured."""
        if not key:
            return None
        keys = {kid: decode_key(value) for kid, value in (old_keys or {}).items()}
        keys[key_id] = decode_key(key)
        return cls(key_id, keys)

    def seal(self, secrets: dict[str, str], *, tenant_id: str, provider_id: str) -> bytes:
        kid = self.current_key_id.encode()
        nonce = os.urandom(NONCE_LEN)
        plaintext = json.dumps(secrets, sort_keys=True).encode()
        sealed = AESGCM(self._keys[self.current_key_id]).encrypt(
            nonce, plaintext, _aad(tenant_id, provider_id)
        )
        return bytes([VERSION, len(kid)]) + kid + nonce + sealed

    @staticmethod
    def key_id_of(blob: bytes) -> str | None:
        """The key id a blob names (None: not a blob of this version)."""
        if len(blob) < 2 or blob[0] != VERSION:
            return None
        return blob[2 : 2 + blob[1]].decode(errors="replace")

    def open(self, blob: bytes, *, tenant_id: str, provider_id: str) -> dict[str, str]:
        if len(blob) < 2 or blob[0] != VERSION:
            raise SealingError("not a sealed secrets blob (unknown version)")
        kid_end = 2 + blob[1]
        kid = blob[2:kid_end].decode(errors="replace")
        key = self._keys.get(kid)
        if key is None:
            raise SealingError(f"sealed with key {kid!r}, which is not configured")
        nonce, sealed = blob[kid_end : kid_end + NONCE_LEN], blob[kid_end + NONCE_LEN :]
        try:
            plaintext = AESGCM(key).decrypt(nonce, sealed, _aad(tenant_id, provider_id))
        except InvalidTag as exc:
            raise SealingError(
                f"secrets of {tenant_id}:{provider_id} do not open "
                "(wrong key, another tenant's blob, or tampered)"
            ) from exc
        secrets = json.loads(plaintext)
        if not isinstance(secrets, dict):
            raise SealingError("sealed secrets are not a JSON object")
        return {str(k): str(v) for k, v in secrets.items()}
