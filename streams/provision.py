"""Create the topics of topics.yaml that are missing; report drift; never delete or alter.

python -m streams.provision            # create missing topics, report drift
python -m streams.provision --check    # only report; exit 1 if anything is missing
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from confluent_kafka.admin import AdminClient, NewTopic

from streams.catalog import TopicCatalog
from streams.kafka_clients import admin_config
from streams.settings import Settings, get_settings


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


def provision(settings: Settings, *, create: bool = True, timeout: float = 30.0) -> ProvisionReport:
    admin = AdminClient(admin_config(settings))
    catalog = TopicCatalog.load(settings)
    existing = existing_partitions(admin)
    report = ProvisionReport()
    to_create: list[NewTopic] = []
    for spec in catalog:
        have = existing.get(spec.physical_name)
        if have is None:
            if create:
                to_create.append(
                    NewTopic(
                        spec.physical_name,
                        num_partitions=spec.partitions,
                        replication_factor=spec.replication_factor,
                        config=spec.kafka_config(),
                    )
                )
            else:
                report.missing.append(spec.physical_name)
            continue
        report.present.append(spec.physical_name)
        if have != spec.partitions:
            report.drift.append(
                f"{spec.physical_name}: {have} partitions, topics.yaml says {spec.partitions}"
            )
    if to_create:
        futures = admin.create_topics(to_create, operation_timeout=timeout, request_timeout=timeout)
        for name, future in futures.items():
            try:
                future.result()
                report.created.append(name)
            except Exception as exc:  # already created by a concurrent provisioner is fine
                if "TOPIC_ALREADY_EXISTS" in str(exc):
                    report.present.append(name)
                else:
                    raise
    return report


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
