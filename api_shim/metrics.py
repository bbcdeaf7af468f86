"""The shim's Prometheus metrics: requests by route, method and status, and their latency.

Served on the shim's own port at `/metrics`, like /health (no credentials: the labels are
route templates and status codes, nothing of a tenant). Behind uvicorn's `--workers`, each
request reaches one process; with PROMETHEUS_MULTIPROC_DIR set (an empty directory, before
the shim starts; `make run` does it) every process writes its samples there and /metrics
answers the sum over all of them (prometheus-client's multiprocess mode). Without it, each
process counts only what it served.
"""

from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "notifications_shim_requests_total",
    "HTTP requests answered by the shim, by route template, method and status code",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "notifications_shim_request_seconds",
    "Time from a request's arrival to the end of its answer, by route template",
    ["route"],
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
UNMATCHED = "unmatched"  # no route (404): one label, whatever the path was
# Set by a layer that answers without routing (api_shim.fast_send): the template it serves.
ROUTE_KEY = "notifications.route"


class RequestMetrics:
    """Counts and times every HTTP request. Outermost, so the send fast path is counted too;
    the route label is the matched template (FastAPI puts the route in the scope), never the
    path itself, so the label set stays bounded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before any answer is Starlette's 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = _route(scope)
            REQUESTS.labels(route, scope["method"], str(status)).inc()
            LATENCY.labels(route).observe(time.perf_counter() - started)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    return str(scope.get(ROUTE_KEY, UNMATCHED))


async def metrics_endpoint(_request: Request) -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
