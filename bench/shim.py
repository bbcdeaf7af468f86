"""HTTP shim benchmark: what accepting a notification over HTTP costs, next to Kafka alone.

    python bench/shim.py --count 2000 --concurrency 32 [--shim-workers 1 2]     (make bench-shim)
    python bench/shim.py --count 10000 --rate 1000 [--shim-workers 1 2]   (steady rate, p99)

Three runs in one process, against the local broker, each writing `count` requests:

- baseline: the shim's own producer (acks=all, awaited) called directly, `concurrency` at once:
  what Kafka and the client cost without HTTP;
- POST /api/v1/notifications to a real shim (`uvicorn api_shim.app:app`, its own process, as
  deployed): auth, rate limits, validation, Avro, produce;
- the same with an Idempotency-Key on every request (one more acknowledged write each).

Prints requests/s, its ratio to the baseline and latency percentiles (call to answer) side
by side. With --rate, the requests are released at that rate instead of back to back, and the
latency of each counts from when it was due.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import httpx  # noqa: E402

from api_shim.app import _producer  # noqa: E402
from core.provision import drop_prefixed, provision  # noqa: E402
from core.settings import Settings  # noqa: E402

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

    @property
    def rate(self) -> float:
        return self.count / self.seconds

    def row(self, baseline: Result) -> str:
        q = statistics.quantiles(self.latencies_ms, n=100)
        return (
            f"{self.name:<40} {self.count:>6} {self.rate:>9.0f} "
            f"{self.rate / baseline.rate:>8.1%} {q[49]:>8.1f} {q[94]:>8.1f} {q[98]:>8.1f}"
        )


async def _run(
    name: str, count: int, concurrency: int, call: object, rate: float | None = None
) -> Result:
    """`count` calls, `concurrency` at a time: back to back, or released at `rate` per second
    (open loop: a call's latency counts from when it was due, so a queue behind a slow
    server is measured, not hidden)."""
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(count):
        queue.put_nowait(i)
    slots = asyncio.Semaphore(concurrency)

    async def worker() -> None:
        while not queue.empty():
            i = queue.get_nowait()
            started = time.perf_counter()
            await call(i)  # type: ignore[operator]
            latencies.append((time.perf_counter() - started) * 1000)

    async def paced(i: int, due: float) -> None:
        async with slots:
            await call(i)  # type: ignore[operator]
        latencies.append((time.perf_counter() - due) * 1000)

    async def release(at_rate: float) -> None:
        # Started when due, not all at once: creating every task up front stalled the
        # client's loop for ~0.4 s at 15,000 requests, which measured as the server's tail.
        started: list[asyncio.Task[None]] = []
        for i in range(count):
            due = begun + i / at_rate
            if due > time.perf_counter():
                await asyncio.sleep(due - time.perf_counter())
            started.append(asyncio.create_task(paced(i, due)))
        await asyncio.gather(*started)

    # The client's own garbage collection (a full one took ~100 ms at 15,000 requests)
    # would stall its loop and read as the server's latency: off while measuring.
    gc.collect()
    gc.disable()
    begun = time.perf_counter()
    try:
        if rate is None:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        else:
            await release(rate)
    finally:
        gc.enable()
    return Result(name, count, time.perf_counter() - begun, latencies)


async def baseline(
    settings: Settings, count: int, concurrency: int, rate: float | None = None
) -> Result:
    producer = _producer(settings)
    topic = settings.topic("notifications.requests")
    value = b"x" * 400  # about the size of the encoded request

    async def produce(i: int) -> None:
        await producer.produce(topic, key=f"bench:{i}".encode(), value=value, headers={})

    try:
        # Warm-up, as the shim gets: the first produce waits for the topic's metadata.
        for i in range(concurrency):
            await produce(-1 - i)
        return await _run("baseline: produce, acks=all", count, concurrency, produce, rate)
    finally:
        producer.close(10)


def _request_bytes(port: int, body: bytes, idempotency_key: str | None) -> bytes:
    lines = [
        "POST /api/v1/notifications HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        "X-API-Key: bench-key",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
    ]
    if idempotency_key is not None:
        lines.append(f"Idempotency-Key: {idempotency_key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _post_all(
    url: str, indexes: range, concurrency: int, idempotent: bool, run: str, rate: float | None
) -> list[float]:
    """POST over `concurrency` keep-alive connections, one request in flight on each.

    A bare HTTP/1.1 client on asyncio streams: a general client (httpx) spends more CPU per
    request than the shim does and, on the same two cores, measured itself (about 300/s).
    """
    port = int(url.rsplit(":", 1)[1])
    body = json.dumps(BODY).encode()
    plain = _request_bytes(port, body, None)
    connections = [await asyncio.open_connection("127.0.0.1", port) for _ in range(concurrency)]
    free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
    for connection in connections:
        free.put_nowait(connection)

    async def post(i: int) -> None:
        reader, writer = await free.get()
        writer.write(_request_bytes(port, body, f"{run}-{i}") if idempotent else plain)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        answer = await reader.readexactly(length)
        if status != 202:
            raise SystemExit(f"unexpected answer {status}: {answer[:500]!r}")
        free.put_nowait((reader, writer))

    try:
        result = await _run("", len(indexes), concurrency, lambda n: post(indexes[n]), rate)
    finally:
        for _, writer in connections:
            writer.close()
    return result.latencies_ms


def _client_process(args: tuple[str, range, int, bool, str, float | None]) -> list[float]:
    return asyncio.run(_post_all(*args))


def over_http(
    url: str,
    count: int,
    concurrency: int,
    *,
    idempotent: bool,
    name: str,
    clients: int,
    rate: float | None = None,
) -> Result:
    """`clients` processes share the requests (one is enough with the bare client)."""
    run = uuid.uuid4().hex[:8]
    shares = [range(i, count, clients) for i in range(clients)]
    share_rate = rate / clients if rate else None
    jobs = [
        (url, share, max(1, concurrency // clients), idempotent, run, share_rate)
        for share in shares
    ]
    started = time.perf_counter()
    with multiprocessing.Pool(clients) as pool:
        latencies = [ms for part in pool.map(_client_process, jobs) for ms in part]
    return Result(name, count, time.perf_counter() - started, latencies)


def _wait_ready(url: str, timeout: float = 60, in_a_row: int = 1) -> None:
    deadline = time.monotonic() + timeout
    ready = 0
    while time.monotonic() < deadline:
        try:
            ready = ready + 1 if httpx.get(f"{url}/ready", timeout=2).status_code == 200 else 0
        except httpx.HTTPError:
            ready = 0
        if ready >= in_a_row:
            return
        time.sleep(0.2 if ready == 0 else 0.02)
    raise SystemExit(f"the shim at {url} did not become ready within {timeout:g}s")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _shim_runs(
    env: dict[str, str], workers: int, profiler: list[str], args: argparse.Namespace
) -> list[Result]:
    """Start the shim with `workers` uvicorn processes, measure without and with a key."""
    port = _free_port()
    argv = [sys.executable, "-m", "uvicorn", "api_shim.app:app", "--port", str(port)]
    argv += ["--workers", str(workers), "--log-level", "warning", "--no-access-log"]
    argv += args.uvicorn_args.split()
    shim = subprocess.Popen([*profiler, *argv], cwd=REPO, env=env)
    url = f"http://127.0.0.1:{port}"
    label = f"{workers} shim worker{'s' if workers > 1 else ''}"
    try:
        # Each worker process follows its views on its own: a run of answers from whichever
        # process the kernel hands the connection to.
        _wait_ready(url, in_a_row=10 * workers)
        # A short warm-up (connections, metadata) before measuring.
        over_http(url, 50 * workers, 8 * workers, idempotent=False, name="warm-up", clients=1)
        return [
            over_http(
                url,
                args.count,
                args.concurrency,
                idempotent=idempotent,
                name=f"POST, {'Idempotency-Key' if idempotent else 'no key'}, {label}",
                clients=args.clients,
                rate=args.rate,
            )
            for idempotent in (False, True)
        ]
    finally:
        shim.terminate()
        shim.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument(
        "--rate",
        type=float,
        help="steady rate (requests/s) instead of a burst: --count requests released at it, "
        "latency counted from when each was due",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--clients", type=int, default=1, help="HTTP client processes")
    parser.add_argument(
        "--uvicorn-args",
        default="",
        help="more uvicorn options, e.g. '--loop asyncio --http h11' (the pure-Python pair)",
    )
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument(
        "--shim-workers", type=int, nargs="+", default=[1], help="uvicorn worker processes"
    )
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
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "TOPIC_PREFIX": settings.topic_prefix,
        "DATABASE_URL": settings.database_url,
        "SHIM_API_KEYS": json.dumps(settings.shim_api_keys),
        "SHIM_RATE_LIMIT_PER_TENANT": str(settings.shim_rate_limit_per_tenant),
        "SHIM_RATE_LIMIT_PER_KEY": str(settings.shim_rate_limit_per_key),
        "LOG_LEVEL": "WARNING",
    }
    # e.g. SHIM_PROFILER="py-spy record -r 50 -o shim.svg --": the shim runs under it.
    profiler = os.environ.get("SHIM_PROFILER", "").split()
    try:
        results = [asyncio.run(baseline(settings, args.count, args.concurrency, args.rate))]
        for workers in args.shim_workers:
            results += _shim_runs(env, workers, profiler, args)
    finally:
        drop_prefixed(settings)
    print(
        f"\n{f'steady rate {args.rate:g}/s, ' if args.rate else 'burst, '}"
        f"concurrency {args.concurrency} from {args.clients} client processes; "
        f"shim as uvicorn with --workers {' / '.join(map(str, args.shim_workers))}; "
        f"{os.cpu_count()} CPUs shared by all"
    )
    print(
        f"{'run':<40} {'count':>6} {'req/s':>9} {'of base':>8} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    )
    for result in results:
        print(result.row(results[0]))


if __name__ == "__main__":
    main()
