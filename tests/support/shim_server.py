"""The shim under a real uvicorn server in a daemon thread, on a free loopback port.

For tests that need real HTTP streaming (SSE, a streamed CSV upload), which TestClient
buffers:

    with ShimServer(settings) as server:
        httpx.get(f"{server.url}/health")
"""

from __future__ import annotations

import threading

import uvicorn

from api_shim.app import create_app
from core.settings import Settings
from tests.support.pipeline import wait_until
from tests.support.ports import free_port


class ShimServer:
    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ShimServer:
        self.thread.start()
        wait_until(lambda: self.server.started, 60, "uvicorn to start")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(15)
