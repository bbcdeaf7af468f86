"""`/health`, `/ready` and `/metrics` for the worker and sink processes (issue 19, item 7).

The shim has its own (FastAPI) routes; workers and the sink have no web framework of their
own that every part runs (Faust's web server is off in most parts), so this is one small
threaded HTTP server on METRICS_PORT, bound to loopback unless told otherwise.

- `/health` (liveness): 200 while the process's work loop still runs: for a worker, its
  asyncio loop has beaten (a callback it reschedules) within HEALTH_STALL_SECONDS (a blocked
  loop stops heartbeats and every agent, which is what a restart cures); for the sink, its
  consume loop has turned within that time. 503 otherwise.
- `/ready` (readiness): 200 when every named check passes (a worker has joined its group and
  recovered its tables; the sink has partitions and its database writes succeed), else 503
  with the failing checks named. Not live is never ready.
- `/metrics`: the process's Prometheus registry.

Answers are JSON: `{"status": ..., "checks": {name: "ok" | reason}}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

log = logging.getLogger(__name__)

# A check answers None when it passes, else why it does not.
Check = Callable[[], str | None]


class Heartbeat:
    """Liveness of a thread's loop: it calls `beat()` each turn."""

    def __init__(self) -> None:
        self._last = time.monotonic()

    def beat(self) -> None:
        self._last = time.monotonic()

    def alive(self, within: float) -> str | None:
        silent = time.monotonic() - self._last
        return None if silent <= within else f"no turn of the loop for {silent:.0f}s"


class LoopHeartbeat(Heartbeat):
    """A Heartbeat an asyncio loop beats itself, every `every` seconds, from a callback it
    reschedules: a blocked loop stops beating. A probe answers at once from the last beat,
    instead of waiting (in a server thread) for the loop to run something."""

    def __init__(self, loop: asyncio.AbstractEventLoop, every: float = 1.0) -> None:
        super().__init__()
        self._loop = loop
        self._every = every
        loop.call_soon_threadsafe(self._tick)  # runs once the loop does

    def _tick(self) -> None:
        self.beat()
        self._loop.call_later(self._every, self._tick)


class Health:
    def __init__(
        self,
        alive: Callable[[float], str | None],
        *,
        stall_seconds: float,
        checks: dict[str, Check] | None = None,
    ) -> None:
        self._alive = alive
        self.stall_seconds = stall_seconds
        self.checks: dict[str, Check] = dict(checks or {})

    def liveness(self) -> tuple[bool, dict[str, object]]:
        problem = self._alive(self.stall_seconds)
        return problem is None, {
            "status": "ok" if problem is None else "stalled",
            "checks": {"loop": problem or "ok"},
        }

    def readiness(self) -> tuple[bool, dict[str, object]]:
        live, _ = self.liveness()
        results = {"loop": "ok" if live else "stalled"}
        for name, check in self.checks.items():
            try:
                results[name] = check() or "ok"
            except Exception as exc:  # a check must not take the endpoint down
                results[name] = f"failed ({type(exc).__name__})"
        ready = all(result == "ok" for result in results.values())
        return ready, {"status": "ready" if ready else "not_ready", "checks": results}


def _handler(health: Health) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(REGISTRY), CONTENT_TYPE_LATEST)
            elif path in ("/health", "/ready"):
                ok, body = health.liveness() if path == "/health" else health.readiness()
                self._send(200 if ok else 503, json.dumps(body).encode(), "application/json")
            else:
                self._send(404, b'{"error": "not_found"}', "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


def serve(health: Health, port: int, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Starts the server in a daemon thread; returns it (`shutdown()` stops it)."""
    server = ThreadingHTTPServer((host, port), _handler(health))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="health-http", daemon=True).start()
    return server
