"""The HTTP shim: `uvicorn api_shim.app:app`. The API is described in docs/api.md.

For services that cannot speak Kafka, tenant administrators and end users: authenticate,
validate, produce, answer (202 once Kafka has acknowledged). It keeps no database: reads come
from the Postgres sink's read model and from views of compacted topics (api_shim.views).
OpenAPI at /docs and /openapi.json.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from api_shim import errors, idempotency
from api_shim.auth import OPERATOR_FAILURE_BURST, jwt_verifier
from api_shim.fast_send import SendFastPath
from api_shim.idempotency_view import answer_view
from api_shim.limits import BodySizeLimit, limit_for_path
from api_shim.metrics import RequestMetrics, metrics_endpoint
from api_shim.producer import AsyncProducer
from api_shim.routes import router
from api_shim.routes_admin import router as admin_router
from api_shim.routes_batches import router as batches_router
from api_shim.routes_bulk import router as bulk_router
from api_shim.routes_inbound import router as inbound_router
from api_shim.routes_live import router as live_router
from api_shim.routes_me import router as me_router
from api_shim.routes_webhooks import router as webhooks_router
from api_shim.views import CompactedView
from connectors.read_model import create_tables, make_engine
from core.catalog import TopicCatalog
from core.kafka_clients import producer_config
from core.logs import configure, log_format, route_to_root
from core.rate_limits import RateLimits
from core.settings import Settings, get_settings
from core.tracing import spans_exported
from schemas import Codec, SchemaCatalog, build_codec

log = logging.getLogger(__name__)

# The compacted topics the shim follows (logical name -> value schema); see api_shim.views.
VIEWS: dict[str, str] = {
    "config.api-keys": "ApiKey",
    idempotency.TOPIC: "IdempotentResponse",
    "config.tenants": "Tenant",
    "config.providers": "ProviderConfig",
    "config.webhook-subscriptions": "WebhookSubscription",
    "config.trigger-rules": "TriggerRule",
    "notifications.templates": "Template",
    "users.preferences": "Preferences",
}

ROUTERS = [
    router,
    inbound_router,
    webhooks_router,
    me_router,
    live_router,
    admin_router,
    batches_router,
    bulk_router,
]


def _producer(settings: Settings) -> AsyncProducer:
    # librdkafka gives up on a message when the shim stops waiting for it, so a request
    # answered 503 is (almost always) not written behind the caller's back.
    timeout = settings.shim_produce_timeout_seconds
    config = producer_config(settings, **{"message.timeout.ms": int(timeout * 1000)})
    return AsyncProducer(config, ack_timeout=timeout)


def create_app(
    settings: Settings | None = None,
    *,
    producer: AsyncProducer | None = None,
    engine: Engine | None = None,
    codec: Codec | None = None,
) -> FastAPI:
    """The app; tests may inject the producer, the engine or the codec (not closed here)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if log_format() == "json":
            # uvicorn set up its own loggers before importing the app: take them over.
            configure(settings.log_level, "json")
            route_to_root("uvicorn", "uvicorn.error", "uvicorn.access")
        state = app.state
        state.codec = codec or build_codec(settings.schema_registry_url, SchemaCatalog.load())
        state.engine = engine or make_engine(settings.database_url)
        state.producer = producer or _producer(settings)
        state.views = await run_in_threadpool(_start_views, settings, state.topics, state.codec)
        state.api_keys = state.views["config.api-keys"]
        try:
            await run_in_threadpool(create_tables, state.engine)
        except SQLAlchemyError as exc:  # /ready reports it; sending does not need it
            log.warning("read model unavailable at start-up: %s", exc)
        try:
            yield
        finally:
            await run_in_threadpool(_stop_views, state.views)
            if producer is None:
                await run_in_threadpool(state.producer.close, settings.shim_produce_timeout_seconds)
            if engine is None:
                state.engine.dispose()

    app = FastAPI(
        title="Notifications ingest shim",
        version="0.1.0",
        description=__doc__,
        lifespan=lifespan,
        # FastAPI's own OpenTelemetry turns itself on when a tracer provider is set (ours
        # always is, for trace propagation): a server span per request plus spans around
        # dependency solving, the endpoint and serialization, built and dropped when nothing
        # exports them (~10% of the shim's CPU, docs/benchmarks.md). Keep only the server
        # span, and only when spans are exported.
        telemetry={
            "tracing": spans_exported(),
            "operation_spans": False,
            "metrics": False,
            "logs": False,
        },
    )
    app.state.settings = settings
    app.state.topics = TopicCatalog.load(settings)
    app.state.jwt = jwt_verifier(settings)
    app.state.rate_limits = RateLimits(burst_seconds=settings.shim_rate_limit_burst_seconds)
    app.state.operator_failures = RateLimits(burst_seconds=OPERATOR_FAILURE_BURST)
    errors.install(app)
    app.add_middleware(
        BodySizeLimit,
        limit_for=limit_for_path(settings.shim_max_body_bytes, settings.shim_max_csv_bytes),
    )
    # The common send skips the rest (api_shim.fast_send); metrics count it too.
    app.add_middleware(SendFastPath, max_body=settings.shim_max_body_bytes)
    app.add_middleware(RequestMetrics)
    app.add_route("/metrics", metrics_endpoint, include_in_schema=False)
    for each in ROUTERS:
        app.include_router(each)
    return app


def _stop_views(views: dict[str, CompactedView]) -> None:
    # A reader polls every 0.2 s; one blocked on an unreachable broker is a daemon thread.
    deadline = time.monotonic() + 0.5
    for view in views.values():
        view.stop(wait=0.0)
    for view in views.values():
        view.stop(wait=max(0.0, deadline - time.monotonic()))


def _start_views(
    settings: Settings, topics: TopicCatalog, codec: Codec
) -> dict[str, CompactedView]:
    views = {
        # The idempotency answers' view is bounded (TTL and bytes): it grows with traffic.
        logical: (answer_view if logical == idempotency.TOPIC else CompactedView)(
            settings, topics.name(logical), schema, codec
        )
        for logical, schema in VIEWS.items()
    }
    for view in views.values():
        view.start()
    # Until a view has caught up, a key created before the restart would be refused: wait
    # (all views at once, up to one deadline), but start anyway: /ready reports the laggards.
    deadline = time.monotonic() + settings.shim_view_catchup_seconds
    for logical, view in views.items():
        if not view.wait_caught_up(max(0.0, deadline - time.monotonic())):
            log.warning("the view of %s has not caught up; /ready reports it", logical)
    return views


app = create_app()
