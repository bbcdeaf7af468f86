"""The Grafana dashboard and the Prometheus scrape config (infra/) match the code: every metric
a panel queries is one a process exports, and every process of compose is scraped."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from prometheus_client import REGISTRY

import api_shim.metrics  # noqa: F401  (registers the shim's metrics)
import connectors.postgres_sink.metrics  # noqa: F401  (registers the sink's metrics)
import streams.runtime.metrics  # registers the stages' metrics
from core import lag

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = json.loads((ROOT / "infra/grafana/dashboards/notifications.json").read_text())
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _exported_names() -> set[str]:
    names = {metric.name for metric in REGISTRY.collect()}
    names.add(lag.METRIC)  # core/lag.py: registered by each process with its group
    names.add(lag.SECONDS_METRIC)
    names.add(streams.runtime.metrics.BREAKER_METRIC)  # registered by the deliver stage
    return names


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_every_queried_metric_is_exported() -> None:
    exported = {_base(name) for name in _exported_names()}
    queried = {
        _base(name)
        for panel in DASHBOARD["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bnotifications_[a-z_]+", target["expr"])
    }
    assert queried and queried - exported == set()


def test_panels_have_unique_ids_and_the_datasource_variable() -> None:
    ids = [panel["id"] for panel in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in DASHBOARD["panels"])


def test_prometheus_scrapes_every_process_that_serves_metrics_in_compose() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    serving = {
        f"{name}:{service['environment']['METRICS_PORT']}"
        for name, service in compose["services"].items()
        if isinstance(service.get("environment"), dict) and "METRICS_PORT" in service["environment"]
    }
    # The shim serves /metrics on its API port (api_shim/metrics.py), not on METRICS_PORT.
    shim_port = compose["services"]["shim"]["command"][-1].split("--port ")[1].split()[0]
    assert "PROMETHEUS_MULTIPROC_DIR" in compose["services"]["shim"]["environment"]
    serving.add(f"shim:{shim_port}")
    scrape = yaml.safe_load((ROOT / "infra/prometheus/prometheus.yml").read_text())
    targets = {
        t for job in scrape["scrape_configs"] for c in job["static_configs"] for t in c["targets"]
    }
    assert serving and serving == targets


def test_registering_the_lag_collector_asks_the_broker_nothing() -> None:
    # Registering used to call collect(): admin requests at start-up, and the sink then died
    # of a segfault in confluent-kafka (8 starts in 8). Only a scrape may ask the broker.
    from prometheus_client import CollectorRegistry

    from core.settings import Settings

    collector = lag.ConsumerLag(Settings(kafka_bootstrap_servers="127.0.0.1:1"), "group")
    CollectorRegistry(auto_describe=True).register(collector)  # as the global REGISTRY
    assert collector._admin is None


def test_compose_runs_jaeger_for_traces_and_hands_its_endpoint_to_every_process() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    jaeger = compose["services"]["jaeger"]
    assert jaeger["profiles"] == ["observability"]
    assert "127.0.0.1:16686:16686" in jaeger["ports"]
    for name in ("worker", "worker-bulk", "worker-status", "sink", "shim"):
        assert "OTEL_EXPORTER_OTLP_ENDPOINT" in compose["services"][name]["environment"], name


def test_docs_observability_lists_every_exported_metric() -> None:
    text = (ROOT / "docs/observability.md").read_text()
    exported = {_base(n) for n in _exported_names() if n.startswith("notifications_")}
    missing = {n for n in exported if not re.search(rf"`{n}(_total)?`", text)}
    assert exported and missing == set()
