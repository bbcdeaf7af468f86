"""A real SMTP server (aiosmtpd) on loopback that keeps every message it receives."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

from tests.support.ports import free_port


class _Collector:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content, policy=policy.default)
        with self.lock:
            self.messages.append(parsed)  # type: ignore[arg-type]
        return "250 OK"


class SmtpCapture:
    def __init__(self, port: int | None = None) -> None:
        self._collector = _Collector()
        self._port = port or free_port()
        self._controller = Controller(self._collector, hostname="127.0.0.1", port=self._port)

    def start(self) -> SmtpCapture:
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def messages(self) -> list[EmailMessage]:
        with self._collector.lock:
            return list(self._collector.messages)

    def by_notification_id(self) -> dict[str, list[EmailMessage]]:
        out: dict[str, list[EmailMessage]] = {}
        for message in self.messages:
            out.setdefault(str(message["X-Notification-Id"]), []).append(message)
        return out

    def wait_for(
        self, count: int, timeout: float = 120.0, check: Callable[[], None] | None = None
    ) -> list[EmailMessage]:
        """Wait for `count` messages; `check` may raise to stop waiting early."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check is not None:
                check()
            if len(self.messages) >= count:
                return self.messages
            time.sleep(0.2)
        raise AssertionError(f"SMTP server got {len(self.messages)} messages, expected {count}")
