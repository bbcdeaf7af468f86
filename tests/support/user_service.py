"""A real local HTTP user service: GET /users/<tenant>/<user> -> profile JSON, or 404.

`mode` switches it between answering ("ok"), failing with 503 ("error") and answering
after half a second ("slow"); `requests` records every path asked for.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class UserServicePeer:
    def __init__(self) -> None:
        self.users: dict[str, dict[str, Any]] = {}
        self.mode = "ok"  # ok | error | slow
        self.requests: list[str] = []
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                service.requests.append(self.path)
                if service.mode == "slow":
                    time.sleep(0.5)
                if service.mode == "error":
                    self.send_response(503)
                    self.end_headers()
                    return
                user = service.users.get(self.path)
                body = json.dumps(user or {"error": "unknown user"}).encode()
                self.send_response(200 if user else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """The URL template the user service client and the worker are configured with."""
        return f"http://127.0.0.1:{self.server.server_port}/users/{{tenant_id}}/{{user_id}}"

    def start(self) -> UserServicePeer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
