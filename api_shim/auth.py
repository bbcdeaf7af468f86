"""Per-tenant API keys: the X-API-Key header names the tenant of every request."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader

from api_shim.errors import Unauthorized

_api_key = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="A tenant's API key (SHIM_API_KEYS)."
)


def tenant_for_key(keys: dict[str, str], presented: str) -> str | None:
    """The tenant of `presented`, comparing against every key in constant time."""
    tenant = None
    for key, key_tenant in keys.items():
        if hmac.compare_digest(key.encode(), presented.encode()):
            tenant = key_tenant
    return tenant


def require_tenant(request: Request, api_key: Annotated[str | None, Depends(_api_key)]) -> str:
    if not api_key:
        raise Unauthorized("the X-API-Key header is required")
    tenant = tenant_for_key(request.app.state.settings.shim_api_keys, api_key)
    if tenant is None:
        raise Unauthorized("unknown API key")
    return tenant


Tenant = Annotated[str, Depends(require_tenant)]
