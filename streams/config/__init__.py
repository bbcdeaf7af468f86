"""Configuration as events: tenants, templates, preferences, profiles and providers live on
compacted Kafka topics; `python -m streams.config` (or `notifications-config`) writes them.

    python -m streams.config seed [--file seed.yaml]       # idempotent: writes only changes
    python -m streams.config put template my-template.yaml # one record or a list
    python -m streams.config delete template acme:welcome:3
    python -m streams.config reseal    # after a PROVIDER_SECRETS_KEY rotation
    python -m streams.config preview --tenant demo --template welcome --channel email \\
        --locale pt-BR --data '{"name": "Ada"}'

See docs/configuration.md.
"""

from streams.config.kinds import KINDS, ConfigError, Kind

__all__ = ["KINDS", "ConfigError", "Kind"]
