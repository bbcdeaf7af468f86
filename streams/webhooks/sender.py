"""One signed POST to a subscriber, judged (streams.webhooks.rules.judge) and never raising.

The client must be guarded (connectors/egress.py): every attempt resolves the host once,
checks each address and connects to a checked one, so DNS that changed since the
subscription was created, or changes between check and connect (rebinding), cannot aim us
at our own network. Redirects are never followed (one could point where the guard refuses),
the whole exchange is bounded by one timeout (a receiver dripping its answer cannot hold the
worker), and at most a few KiB of the answer are read. The answer's body goes into the
tenant-readable delivery log only when it came from a public address.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import httpx

from connectors.egress import http_url, is_guarded, peer_is_public
from connectors.errors import DeliveryError
from streams.webhooks.rules import RESPONSE_EXCERPT_CHARS, Answer, Verdict, judge

_READ_LIMIT = 4 * RESPONSE_EXCERPT_CHARS


async def post(
    client: httpx.AsyncClient,
    url: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    timeout_seconds: float,
) -> Answer:
    if not is_guarded(client):
        raise ValueError("status webhooks need an egress.guarded_client")
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        http_url(url, what="webhook URL")
        async with asyncio.timeout(timeout_seconds):
            async with client.stream(
                "POST",
                url,
                content=payload,
                headers=headers,
                follow_redirects=False,
                timeout=timeout_seconds,
            ) as response:
                text = await _start_of(response)
                public = peer_is_public(response)
    except DeliveryError as exc:  # the guard refused the target, or its DNS failed (transient)
        verdict: Verdict = "transient" if exc.retriable else "permanent"
        return Answer(verdict, error=f"target refused: {exc}", duration_ms=elapsed_ms())
    except (TimeoutError, httpx.TimeoutException):
        return Answer(
            "transient", error=f"no answer within {timeout_seconds:g}s", duration_ms=elapsed_ms()
        )
    except httpx.HTTPError as exc:  # connection refused or reset, protocol errors
        return Answer(
            "transient", error=f"connection failed: {type(exc).__name__}", duration_ms=elapsed_ms()
        )
    # A body from a non-public peer (allowed only for tests and development) is withheld.
    answer = judge(
        response.status_code, response.headers.get("Retry-After"), text if public else None
    )
    return replace(answer, duration_ms=elapsed_ms())


async def _start_of(response: httpx.Response) -> str:
    """The first few KiB of the answer, as text."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size >= _READ_LIMIT:
            break
    return b"".join(chunks)[:_READ_LIMIT].decode("utf-8", errors="replace").strip()
