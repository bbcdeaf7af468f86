"""HTTP shim benchmark: what accepting a notification over HTTP costs, next to Kafka alone.

    python bench/shim.py --count 2000 --concurrency 32      (make bench-shim)

Three runs in one process, against the local broker, each writing `count` requests:

- baseline: the shim's own producer (acks=all, awaited) called directly, `concurrency` at once:
  what Kafka and the client cost without HTTP;
- POST /api/v1/notifications through a real uvicorn server (auth, validation, Avro, produce);
- the same with an Idempotency-Key on every request (one more acknowledged write each).

Prints requests/s and latency percentiles (call to answer) side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402
import uvicorn  # noqa: E402

from api_shim.app import _producer, create_app  # noqa: E402
from streams.provision import provision  # noqa: E402
from streams.settings import Settings  # noqa: E402

BODY = {
    "recipients": [{"user_id": "bench-user", "email": "bench@example.com"}],
    "channels": ["email"],
    "content": {"subject": "Hi {{ name }}", "text": "Hello {{ name }}"},
    "data": {"name": "Ada"},
}


@dataclass
class Result:
    name: str
    count: int
    seconds: float
    latencies_ms: list[float]

    def row(self) -> str:
        q = statistics.quantiles(self.latencies_ms, n=100)
        return (
            f"{self.name:<34} {self.count:>6} {self.count / self.seconds:>9.0f} "
            f"{q[49]:>8.1f} {q[94]:>8.1f} {q[98]:>8.1f}"
        )


async def _run(name: str, count: int, concurrency: int, call: object) -> Result:
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            await call(i)  # type: ignore[operator]
            latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return Result(name, count, time.perf_counter() - started, latencies)


async def baseline(settings: Settings, count: int, concurrency: int) -> Result:
    producer = _producer(settings)
    topic = settings.topic("notifications.requests")
    value = b"x" * 400  # about the size of the encoded request

    async def produce(i: int) -> None:
        await producer.produce(topic, key=f"bench:{i}".encode(), value=value, headers={})

    try:
        return await _run("baseline: produce, acks=all", count, concurrency, produce)
    finally:
        producer.close(10)


async def over_http(
    url: str, count: int, concurrency: int, *, idempotent: bool, name: str
) -> Result:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        run = uuid.uuid4().hex[:8]

        async def post(i: int) -> None:
            headers = {"X-API-Key": "bench-key"}
            if idempotent:
                headers["Idempotency-Key"] = f"{run}-{i}"
            response = await client.post("/api/v1/notifications", json=BODY, headers=headers)
            if response.status_code != 202:
                raise SystemExit(f"unexpected answer {response.status_code}: {response.text}")

        return await _run(name, count, concurrency, post)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    args = parser.parse_args()

    settings = Settings(
        kafka_bootstrap_servers=args.bootstrap,
        topic_prefix=f"bench-{uuid.uuid4().hex[:8]}.",
        database_url="sqlite://",
        shim_api_keys={"bench-key": "bench"},
        # The benchmark measures the shim, not its rate limiter.
        shim_rate_limit_per_tenant=1e9,
        shim_rate_limit_per_key=1e9,
    )
    provision(settings)
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.1)
    url = f"http://127.0.0.1:{port}"
    try:
        # A short warm-up (connections, metadata, JIT of nothing: Python) before measuring.
        asyncio.run(over_http(url, 50, 8, idempotent=False, name="warm-up"))
        results = [
            asyncio.run(baseline(settings, args.count, args.concurrency)),
            asyncio.run(
                over_http(url, args.count, args.concurrency, idempotent=False, name="POST, no key")
            ),
            asyncio.run(
                over_http(
                    url,
                    args.count,
                    args.concurrency,
                    idempotent=True,
                    name="POST, Idempotency-Key",
                )
            ),
        ]
    finally:
        server.should_exit = True
        thread.join(10)
    print(f"\nconcurrency {args.concurrency}, one shim process (uvicorn, 1 worker)")
    print(f"{'run':<34} {'count':>6} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
    for result in results:
        print(result.row())


if __name__ == "__main__":
    main()
