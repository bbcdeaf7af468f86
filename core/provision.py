"""Create the topics of topics.yaml that are missing; report drift; never delete or alter.

python -m core.provision            # create missing topics, report drift
python -m core.provision --check    # only report; exit 1 if anything is missing
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, NewTopic

from core.catalog import TopicSpec, every_group_catalog
from core.kafka_clients import admin_config
from core.settings import Settings, get_settings


@dataclass
class ProvisionReport:
    created: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    drift: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [f"created {name}" for name in self.created]
        out += [f"MISSING {name}" for name in self.missing]
        out += [f"DRIFT {line}" for line in self.drift]
        out.append(
            f"{len(self.present)} present, {len(self.created)} created, "
            f"{len(self.missing)} missing, {len(self.drift)} drifted"
        )
        return out


def existing_partitions(admin: AdminClient, timeout: float = 10.0) -> dict[str, int]:
    metadata = admin.list_topics(timeout=timeout)
    return {name: len(topic.partitions) for name, topic in metadata.topics.items()}


def drop_prefixed(settings: Settings, timeout: float = 30.0) -> int:
    """Deletes every topic named under `settings.topic_prefix`, Faust's changelogs included: a
    benchmark's own topics once it is done (each run makes ~300 partitions, and a local broker
    with a 512 MB heap runs out of memory at ~17,000). Returns how many were deleted."""
    prefix = settings.topic_prefix
    if not prefix:
        raise ValueError("refusing to delete every topic: no topic prefix is set")
    admin = AdminClient(admin_config(settings))
    names = [name for name in existing_partitions(admin, timeout) if name.startswith(prefix)]
    for future in admin.delete_topics(names, operation_timeout=timeout).values() if names else []:
        future.result()
    return len(names)


def provision(settings: Settings, *, create: bool = True, timeout: float = 30.0) -> ProvisionReport:
    admin = AdminClient(admin_config(settings))
    # Every lane's worker group has its own table changelogs ({app_id} in topics.yaml).
    specs = {spec.physical_name: spec for spec in every_group_catalog(settings)}
    existing = existing_partitions(admin)
    report = ProvisionReport()
    absent = [name for name in specs if name not in existing]
    if not create:
        report.missing = absent
    elif absent:
        already = _create(admin, [specs[name] for name in absent], report, timeout)
        # Wait until every topic is in the metadata: a worker started right after provision
        # reads it, and on a loaded broker a created topic can take seconds to show up (two
        # test pipelines at once: the worker refused to start on "missing" topics). Those
        # created meanwhile by someone else get their partition counts checked too.
        seen = _wait_visible(admin, report.created + already)
        existing.update({name: seen[name] for name in already})
    for name, spec in specs.items():
        have = existing.get(name)
        if have is None:
            continue
        report.present.append(name)
        if have != spec.partitions:
            report.drift.append(f"{name}: {have} partitions, topics.yaml says {spec.partitions}")
    return report


def _wait_visible(admin: AdminClient, names: list[str], attempts: int = 120) -> dict[str, int]:
    for _ in range(attempts):
        seen = existing_partitions(admin)
        if all(name in seen for name in names):
            return seen
        time.sleep(0.25)
    raise RuntimeError(f"topics reported as existing never appeared in metadata: {names}")


def _create(
    admin: AdminClient, specs: list[TopicSpec], report: ProvisionReport, timeout: float
) -> list[str]:
    """Create topics; the names of those that already existed."""
    new_topics = [
        NewTopic(
            spec.physical_name,
            num_partitions=spec.partitions,
            replication_factor=spec.replication_factor,
            config=spec.kafka_config(),
        )
        for spec in specs
    ]
    futures = admin.create_topics(new_topics, operation_timeout=timeout, request_timeout=timeout)
    already = []
    for name, future in futures.items():
        try:
            future.result()
            report.created.append(name)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
            already.append(name)
    return already


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="report only, create nothing")
    args = parser.parse_args(argv)
    settings = get_settings()
    report = provision(settings, create=not args.check)
    for line in report.lines():
        print(line)
    return 1 if report.missing or report.drift else 0


if __name__ == "__main__":
    sys.exit(main())
