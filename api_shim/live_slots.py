"""How many live streams may be open at once in this shim process: in all, per tenant, and per
caller (an API key or a user). Each stream holds a Kafka consumer and a thread, so without the
per-tenant and per-caller limits one tenant (or one leaked key) could take every stream of the
process and lock the others out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from api_shim.auth import Principal
from api_shim.errors import TooManyRequests, Unavailable
from core.settings import Settings

# A stream's slot frees only when a client disconnects: no exact time to give, a hint.
RETRY_AFTER_SECONDS = 10.0

Caller = tuple[str, str, str]  # (tenant, kind, subject)


class StreamSlots:
    """Counts of open streams. `take()` either gives a slot (and the function that gives it
    back, safe to call twice) or refuses: 429 over a tenant's or caller's share, 503 when the
    process is full. The event loop is the only caller, so no lock is needed."""

    def __init__(self, settings: Settings) -> None:
        self.total = settings.shim_sse_max_streams
        self.per_tenant = settings.shim_sse_max_streams_per_tenant
        self.per_caller = settings.shim_sse_max_streams_per_principal
        self.open = 0
        self.tenants: Counter[str] = Counter()
        self.callers: Counter[Caller] = Counter()

    def take(self, principal: Principal) -> Callable[[], None]:
        tenant = principal.tenant_id
        caller = (tenant, principal.kind, principal.subject)
        if self.callers[caller] >= self.per_caller:
            raise TooManyRequests(
                f"{self.per_caller} live streams are already open for these credentials",
                RETRY_AFTER_SECONDS,
            )
        if self.tenants[tenant] >= self.per_tenant:
            raise TooManyRequests(
                f"{self.per_tenant} live streams are already open for this tenant",
                RETRY_AFTER_SECONDS,
            )
        if self.open >= self.total:
            raise Unavailable("too many live streams are open on this server; retry later")
        self.open += 1
        self.tenants[tenant] += 1
        self.callers[caller] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.open -= 1
            # The counters hold only tenants and callers with a stream open.
            self.tenants[tenant] -= 1
            if self.tenants[tenant] <= 0:
                del self.tenants[tenant]
            self.callers[caller] -= 1
            if self.callers[caller] <= 0:
                del self.callers[caller]

        return release
