"""One signed POST to a subscriber, judged (streams.webhook_rules.judge) and never raising.

The target is checked against the SSRF guard (`connectors.webhook.check_target`) before
every attempt, because DNS may have changed since the subscription was created. Redirects
are never followed (one could point where the guard refuses), the whole exchange is bounded
by one timeout (a receiver dripping its answer cannot hold the worker), and at most a few
KiB of the answer are read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import httpx

from connectors.errors import DeliveryError
from connectors.webhook import check_target
from streams.webhook_rules import RESPONSE_EXCERPT_CHARS, Answer, Verdict, judge

_READ_LIMIT = 4 * RESPONSE_EXCERPT_CHARS


async def post(
    client: httpx.AsyncClient,
    url: str,
    payload: bytes,
    headers: dict[str, str],
    *,
    timeout_seconds: float,
    allow_private: bool,
) -> Answer:
    started = time.monotonic()

    def elapsed_ms() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        await check_target(url, allow_private=allow_private)
    except DeliveryError as exc:  # refused (permanent) or a DNS failure (transient)
        verdict: Verdict = "transient" if exc.retriable else "permanent"
        return Answer(verdict, error=f"target refused: {exc}", duration_ms=elapsed_ms())
    try:
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
    except (TimeoutError, httpx.TimeoutException):
        return Answer(
            "transient", error=f"no answer within {timeout_seconds:g}s", duration_ms=elapsed_ms()
        )
    except httpx.HTTPError as exc:  # connection refused or reset, protocol errors
        return Answer(
            "transient", error=f"connection failed: {type(exc).__name__}", duration_ms=elapsed_ms()
        )
    answer = judge(response.status_code, response.headers.get("Retry-After"), text)
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
