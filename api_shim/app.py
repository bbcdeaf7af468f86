"""The HTTP ingest shim: `uvicorn api_shim.app:app`.

For services that cannot speak Kafka: authenticate (X-API-Key -> tenant), validate, produce
to notifications.requests, answer 202 once Kafka has acknowledged. Status queries read the
Postgres sink's read model. OpenAPI at /docs and /openapi.json.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from api_shim import errors
from api_shim.producer import AsyncProducer
from api_shim.routes import router
from connectors.read_model import create_tables, make_engine
from schemas import Codec, SchemaCatalog, build_codec
from streams.catalog import TopicCatalog
from streams.kafka_clients import producer_config
from streams.settings import Settings, get_settings

log = logging.getLogger(__name__)


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
        state = app.state
        state.codec = codec or build_codec(settings.schema_registry_url, SchemaCatalog.load())
        state.engine = engine or make_engine(settings.database_url)
        state.producer = producer or _producer(settings)
        try:
            await run_in_threadpool(create_tables, state.engine)
        except SQLAlchemyError as exc:  # /ready reports it; sending does not need it
            log.warning("read model unavailable at start-up: %s", exc)
        try:
            yield
        finally:
            if producer is None:
                await run_in_threadpool(state.producer.close, settings.shim_produce_timeout_seconds)
            if engine is None:
                state.engine.dispose()

    app = FastAPI(
        title="Notifications ingest shim",
        version="0.1.0",
        description=__doc__,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.topics = TopicCatalog.load(settings)
    errors.install(app)
    app.include_router(router)
    return app


app = create_app()
