"""The Postgres (or SQLite) sink: notifications.status and notifications.inbox -> read model.

python -m connectors.postgres_sink [--metrics-port 9102]
"""

from __future__ import annotations

from connectors.postgres_sink.main import main
from connectors.postgres_sink.runner import SinkRunner

__all__ = ["SinkRunner", "main"]
