"""The admin API (docs/api.md, "Admin endpoints"): configuration as events.

`/api/v1/admin/...` needs the admin scope (an API key with it, or a user with the role
admin) and acts on the caller's tenant only; another tenant's object answers 404.
`/api/v1/platform/tenants` is the platform operator's. Every write is a record on its
compacted topic (config.tenants, config.api-keys, notifications.templates,
config.providers, config.trigger-rules), answered once Kafka has acknowledged it and applied
to this process's views at once; reads come from those views.
"""

from __future__ import annotations

from fastapi import APIRouter

from api_shim import admin_providers, admin_templates, admin_tenants, admin_triggers

router = APIRouter()
for part in (admin_tenants, admin_templates, admin_providers, admin_triggers):
    router.include_router(part.router)
