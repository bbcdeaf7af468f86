"""Template lookups: which version of a template a notification uses.

The templates topic is compacted and keyed `tenant_id:template_id:version`; every worker holds
all of it (streams.config_views.templates). This module keeps an index of that view by the
record's own fields (tenant_id, template_id, version), not by the key, so records written
under the legacy key `tenant_id:template_id` resolve too. A tombstone removes the version its
key held.

Resolution: a pinned version is used in any state but archived; otherwise the highest
published version. Drafts are only ever reached by pinning.
"""

from __future__ import annotations

from typing import Any

Template = dict[str, Any]
_Name = tuple[str, str]  # (tenant_id, template_id)


class TemplateIndex:
    """(tenant_id, template_id) -> version -> record, maintained from view changes."""

    def __init__(self) -> None:
        # Each version remembers which keys hold it: two keys (legacy and versioned) may
        # carry the same version, and a tombstone of one must not hide the other.
        self._versions: dict[_Name, dict[int, dict[str, Template]]] = {}

    def apply(self, key: str, old: Template | None, new: Template | None) -> None:
        if old is not None:
            self._remove(key, old)
        if new is not None:
            name = (new["tenant_id"], new["template_id"])
            self._versions.setdefault(name, {}).setdefault(int(new["version"]), {})[key] = new

    def _remove(self, key: str, record: Template) -> None:
        name = (record["tenant_id"], record["template_id"])
        versions = self._versions.get(name, {})
        holders = versions.get(int(record["version"]), {})
        holders.pop(key, None)
        if not holders:
            versions.pop(int(record["version"]), None)
        if not versions:
            self._versions.pop(name, None)

    def versions(self, tenant_id: str, template_id: str) -> dict[int, Template]:
        """Every known version (any state), the most recently written record per version."""
        held = self._versions.get((tenant_id, template_id), {})
        return {v: list(holders.values())[-1] for v, holders in held.items() if holders}

    def resolve(
        self, tenant_id: str, template_id: str, version: int | None = None
    ) -> Template | None:
        versions = self.versions(tenant_id, template_id)
        if version is not None:
            pinned = versions.get(version)
            if pinned is None or pinned.get("state") == "archived":
                return None
            return pinned
        published = [v for v, t in versions.items() if t.get("state", "published") == "published"]
        return versions[max(published)] if published else None


_index = TemplateIndex()
_attached = False


def _attach() -> None:
    """Index the shared templates view (once per process; replays what it already holds)."""
    global _attached
    if not _attached:
        from streams import config_views  # the worker's view; imported late for pure callers

        config_views.templates.add_listener(_index.apply)
        _attached = True


def resolve(tenant_id: str, template_id: str, version: int | None = None) -> Template | None:
    """The Template record: the pinned version (any state but archived), else the highest
    published one."""
    _attach()
    return _index.resolve(tenant_id, template_id, version)


def describe_missing(tenant_id: str, template_id: str, version: int | None) -> str:
    """Why resolve() found nothing, for a `failed` status reason."""
    _attach()
    versions = _index.versions(tenant_id, template_id)
    if not versions:
        return f"template {template_id!r} not found for tenant {tenant_id}"
    if version is None:
        return f"template {template_id!r} has no published version for tenant {tenant_id}"
    if version in versions:
        return f"template {template_id!r} version {version} is archived"
    known = ", ".join(str(v) for v in sorted(versions))
    return f"template {template_id!r} has no version {version} (known: {known})"
