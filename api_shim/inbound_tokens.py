"""One body per webhook signature token, across every shim process (Mailgun's replay guard).

Mailgun signs a timestamp and a random token, not the event, and accepts the timestamp for
hours: anyone who saw one signed webhook could send another event under its signature. A
token is therefore bound to the first body it came with. A per-process cache bound it only
in the process that saw it first; with several shim processes behind a load balancer (or
after a restart) the same signature carried a forged event to another one.

Here the binding is decided by Kafka's order. A process that does not know the token writes a
claim (key: configuration + token hash, value: the body's hash) to shim.inbound-tokens, then
waits until its own view of the topic has read past that claim. All claims of one key are in
one partition, so every process sees them in the same order, and the first one wins: the
process whose claim came second compares against the first's body and refuses. The topic is
not compacted (compaction keeps the latest claim, not the first) but deleted after a
retention longer than the timestamp tolerance, which is all a claim needs to outlive.

Each process holds the live claims (expired ones are dropped; past `max_claims` the oldest
are forgotten first, see docs/security.md).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict
from typing import Any

from starlette.datastructures import State

from api_shim.errors import Unavailable
from api_shim.publish import encode, produce
from api_shim.views import CompactedView, Record
from core.settings import Settings
from schemas import Codec

TOPIC = "shim.inbound-tokens"
SCHEMA = "InboundTokenClaim"
MAX_CLAIMS = 1_000_000  # about 300 bytes each
READ_BACK_POLL_SECONDS = 0.01


def _now_ms() -> int:
    return int(time.time() * 1000)


class ClaimView(CompactedView):
    """key -> the first live claim of the key, in topic order; and how far it has read."""

    def __init__(
        self,
        settings: Settings,
        topic: str,
        schema: str,
        codec: Codec,
        *,
        max_claims: int = MAX_CLAIMS,
    ) -> None:
        super().__init__(settings, topic, schema, codec)
        self.max_claims = max_claims
        self._records: OrderedDict[str, Record] = OrderedDict()  # in topic order: oldest first
        self._read: dict[int, int] = {}  # partition -> the highest offset taken

    def get(self, key: str) -> Record | None:
        found = super().get(key)
        return found if found is not None and found["expires_at"] > _now_ms() else None

    def apply(self, key: str, record: Record | None) -> None:
        # Only records read from the topic come here: a claim counts once Kafka ordered it.
        with self._lock:
            now = _now_ms()
            self._evict(now)
            if record is None or record["expires_at"] <= now:
                return
            first = self._records.get(key)
            if first is None or first["expires_at"] <= now:
                self._records[key] = record
                self._records.move_to_end(key)

    def _evict(self, now: int) -> None:
        while self._records:
            oldest = next(iter(self._records.values()))
            if oldest["expires_at"] > now and len(self._records) < self.max_claims:
                return
            self._records.popitem(last=False)

    def _take(self, message: Any) -> None:
        super()._take(message)
        if message.error() is None:  # an undecodable record is read past all the same
            with self._lock:
                partition = message.partition()
                self._read[partition] = max(self._read.get(partition, -1), message.offset())

    def has_read(self, partition: int, offset: int) -> bool:
        with self._lock:
            return self._read.get(partition, -1) >= offset

    async def read_past(self, partition: int, offset: int) -> None:
        """Returns once the view has taken the record at `offset` (and so every one before)."""
        # The reader is a thread: polling a few ms is simpler than a loop-bound event per waiter.
        while not self.has_read(partition, offset):  # noqa: ASYNC110
            await asyncio.sleep(READ_BACK_POLL_SECONDS)


def claim_key(tenant_id: str, provider_id: str, token: str) -> str:
    return f"{tenant_id}:{provider_id}:{hashlib.sha256(token.encode()).hexdigest()}"


async def first_use(
    state: State,
    tenant_id: str,
    provider_id: str,
    token: str,
    body: bytes,
    *,
    ttl_seconds: float,
) -> bool:
    """Whether `body` is the first (or the same as the first) body seen with `token` for this
    configuration by any shim process. 503 if Kafka cannot order the claim in time."""
    view: ClaimView = state.views[TOPIC]
    key = claim_key(tenant_id, provider_id, token)
    digest = hashlib.sha256(body).hexdigest()
    first = view.get(key)
    if first is None:
        now = _now_ms()
        record = {
            "tenant_id": tenant_id,
            "provider_id": provider_id,
            "body_sha256": digest,
            "claimed_at": now,
            "expires_at": now + int(ttl_seconds * 1000),
        }
        message = await produce(state, TOPIC, key=key, value=await encode(state, SCHEMA, record))
        partition, offset = message.partition(), message.offset()
        assert partition is not None and offset is not None  # set on every acknowledged message
        try:
            async with asyncio.timeout(state.settings.shim_produce_timeout_seconds):
                await view.read_past(partition, offset)
        except TimeoutError:
            raise Unavailable(
                "the webhook's signature token could not be checked; retry later"
            ) from None
        first = view.get(key)
        if first is None:  # expired meanwhile: only with a clock far off
            raise Unavailable("the webhook's signature token could not be checked; retry later")
    return hmac.compare_digest(str(first["body_sha256"]), digest)


def claim_view(settings: Settings, topic: str, codec: Codec) -> ClaimView:
    return ClaimView(settings, topic, SCHEMA, codec)
