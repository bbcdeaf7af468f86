"""One Settings object for every process (workers, sink, shim), read from the environment.

Every variable is documented in README.md and `.env.example`.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    # Kafka
    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    schema_registry_url: str | None = None
    # Prepended to every topic name and to the app id: lets tests run isolated pipelines
    # on one broker, and lets several environments share a cluster.
    topic_prefix: str = ""
    app_id: str = "notifications"
    # How every client (workers, shim, sink, provisioning, tools) reaches the brokers
    # (docs/security.md). PLAINTEXT is unauthenticated: only for a network no one else reaches.
    # The translations to client options are core.kafka_clients.security_config
    # (confluent-kafka) and core.kafka_auth.faust_credentials (Faust, aiokafka).
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    # PEM files: the CA that signed the brokers' certificates (unset: the system's CAs), and a
    # client certificate and key for brokers that authenticate clients by TLS (mTLS).
    kafka_ssl_ca_file: str | None = None
    kafka_ssl_cert_file: str | None = None
    kafka_ssl_key_file: str | None = None

    # Faust worker
    # Which part of the pipeline this worker runs (streams/runtime/parts.py). "transactional": the
    # transactional lane's stages plus the flows that feed stages (scheduler, retry release,
    # triggers); "bulk": the bulk lane's stages, as its own consumer group (<app id>-bulk)
    # with its own tables, so a marketing blast cannot delay a password reset; "status": the
    # flows that read every status event (status and batch tracking, receipts, status
    # webhooks), as group <app id>-status on the main group's tables, so the status events
    # of a bulk blast do not queue in front of transactional stages. "all" runs everything
    # in one process (no isolation under load).
    worker_lane: Literal["all", "transactional", "bulk", "status"] = "all"
    # A bulk-lane worker lowers its CPU priority by this much (os.nice), so on a shared
    # machine the transactional worker gets the CPU first. 0: leave it.
    bulk_worker_niceness: int = 10
    # Faust's own web server (its /metrics-free status pages); off unless a port is given.
    worker_web_port: int | None = None
    # /metrics, /health and /ready of a worker or the sink (core/health.py); off unless
    # a port is given. METRICS_HOST 0.0.0.0 where probes come from outside (Kubernetes).
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    # /health answers 503 once the process's loop has not turned for this long.
    health_stall_seconds: float = 30.0
    # How long the group waits for a silent (crashed) worker before giving its partitions to
    # another: the pause a crash causes. Faust's 60 s default is long for notifications.
    worker_session_timeout_seconds: float = 10.0
    idempotency_ttl_seconds: int = 24 * 3600
    delivered_ttl_seconds: int = 7 * 24 * 3600
    # Delivery: attempts of a notification (each one tries every candidate provider) before
    # it is dead-lettered; between attempts it waits on a retry topic, exponential backoff
    # with jitter from deliver_backoff_seconds up to deliver_backoff_max_seconds.
    deliver_max_attempts: int = 5
    deliver_backoff_seconds: float = 2.0
    deliver_backoff_max_seconds: float = 600.0
    # channel -> provider id used when a tenant configures none (after the request override
    # and the tenant's own providers). "env:smtp"/"env:in_app" are built from this
    # environment; "*:<id>" names a platform-wide config on config.providers (tenant "*").
    default_providers: dict[str, str] = Field(
        default_factory=lambda: {"email": "env:smtp", "in_app": "env:in_app"}
    )
    # Circuit breakers per provider credential (see streams/delivery/breakers.py).
    breaker_window_seconds: float = 60.0
    breaker_min_calls: int = 5
    breaker_failure_rate: float = 0.5
    breaker_slow_call_seconds: float = 5.0
    breaker_open_seconds: float = 30.0
    # Per-tenant delivery rate (messages/s, all channels) unless the tenant's settings say
    # `rate_limit_per_second`; unset: unlimited. Provider limits come from their configs.
    tenant_rate_limit_per_second: float | None = None
    # One worker serving both lanes: share of each provider bucket the bulk lane leaves for
    # transactional traffic.
    bulk_reserve_fraction: float = 0.2
    # Lanes in separate processes: share of each provider and tenant limit the bulk lane's
    # processes spend (the transactional lane's spend the rest), so together they keep it.
    bulk_rate_share: float = Field(default=0.5, gt=0.0, lt=1.0)
    # Private/loopback targets for every tenant-configured connector, status webhooks and the
    # shim's provider check (the SSRF guard, connectors/egress.py, off): tests and dev only.
    webhook_allow_private_targets: bool = False
    # Outgoing status webhooks (streams/webhooks/agents.py, docs/api.md): attempts per
    # delivery; the wait between them (exponential with jitter, at least Retry-After, at most
    # the max); the HTTP timeout per attempt; deliveries one worker sends at once; how long
    # a rotated-out signing secret still signs too; subscriptions per tenant (the shim).
    webhook_max_attempts: int = 10
    webhook_backoff_seconds: float = 10.0
    webhook_backoff_max_seconds: float = 1800.0
    webhook_timeout_seconds: float = 10.0
    webhook_delivery_concurrency: int = 8
    webhook_secret_rotation_grace_seconds: int = 24 * 3600
    webhook_max_subscriptions_per_tenant: int = 25

    # AES-GCM key for provider secrets in config.providers (base64, 32 bytes), its id, and
    # older keys still accepted for opening ({"id": "base64"}); see core/sealing.py.
    provider_secrets_key: SecretStr | None = None
    provider_secrets_key_id: str = "k1"
    provider_secrets_old_keys: dict[str, SecretStr] = Field(default_factory=dict)

    # Enrichment: an HTTP user service asked when a profile is not in the users.profiles table.
    # A URL template with {tenant_id} and {user_id}; unset: no user service.
    user_service_url: str | None = None
    user_service_timeout_seconds: float = 2.0
    user_service_cache_ttl_seconds: float = 300.0
    # Circuit breaker: open after this many consecutive failures, try again after the reset time.
    user_service_breaker_failures: int = 5
    user_service_breaker_reset_seconds: float = 30.0

    # Scheduler: how often each worker sweeps its partitions for due notifications and digests.
    scheduler_tick_seconds: float = 1.0

    # Template limits (streams/content/template_limits.py): characters a render may produce (all of
    # subject, text and html), and the time it may take; beyond either it fails.
    template_max_output_chars: int = 1_000_000
    template_render_budget_seconds: float = 1.0

    # Trigger rules: upstream domain events -> notifications. Unset or empty: no rules file
    # (tenants' rules from the admin API, on config.trigger-rules, still apply).
    trigger_rules_file: str | None = "streams/config/triggers.yaml"

    # Oversized messages. A request larger than this is refused (failed, dead-lettered)
    # before it is fanned out: Kafka's default limit is 1 MB, and a notification carries its
    # request's content and data. A dead letter keeps the original bytes only up to
    # dead_letter_max_value_bytes, so it fits the dead-letter topic's own limit.
    request_max_bytes: int = 1_000_000
    dead_letter_max_value_bytes: int = 512 * 1024

    # Sink and read model
    database_url: str = "sqlite:///var/notifications.db"
    sink_batch_size: int = 500
    sink_flush_seconds: float = 0.5

    # SMTP provider
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 1025
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_start_tls: bool = False
    smtp_use_tls: bool = False
    smtp_timeout_seconds: float = 10.0
    smtp_from: str = "notifications@example.com"

    # HTTP shim (docs/api.md). Bootstrap API keys: key -> tenant id, a JSON object in the
    # environment; they have every scope. Keys created through the admin API live (hashed)
    # on config.api-keys instead. None by default: a well-known key with every scope must never
    # be a library default (`make run` sets its demo key explicitly, scripts/run_local.py).
    shim_api_keys: dict[str, str] = Field(default_factory=dict)
    shim_produce_timeout_seconds: float = 10.0
    # The platform operator's token for /api/v1/platform (creating tenants); unset: disabled.
    shim_operator_token: SecretStr | None = None
    # OIDC/JWT bearer tokens for the user endpoints: the issuer's JWKS, issuer and audience.
    shim_jwt_jwks_url: str | None = None
    shim_jwt_issuer: str | None = None
    shim_jwt_audience: str | None = None
    shim_jwt_algorithms: list[str] = Field(default_factory=lambda: ["RS256", "ES256"])
    shim_jwt_tenant_claim: str = "tenant_id"
    shim_jwt_roles_claim: str = "roles"
    shim_jwt_leeway_seconds: float = 30.0
    # At most one JWKS request per this many seconds per shim process, however many unknown
    # key ids tokens name (a rotated-in key is picked up after it).
    shim_jwt_jwks_refetch_seconds: float = 60.0
    # Requests per second (and burst) per tenant and per API key or user, per shim process.
    shim_rate_limit_per_tenant: float = 200.0
    shim_rate_limit_per_key: float = 100.0
    shim_rate_limit_burst_seconds: float = 2.0
    # Body size limits: JSON bodies, and the streamed CSV upload.
    shim_max_body_bytes: int = 1_048_576
    shim_max_csv_bytes: int = 1_073_741_824
    shim_csv_chunk_rows: int = 500
    shim_csv_max_row_errors: int = 1000
    # Send many: notifications per call. Batches: requests per appended chunk (one
    # BatchCommand, which must stay under Kafka's 1 MB message size).
    shim_send_many_max: int = 100
    shim_batch_chunk_max: int = 500
    # SSE: a comment line this often keeps proxies from closing an idle stream.
    shim_sse_keepalive_seconds: float = 15.0
    # SSE streams open at once per shim process (each holds its own Kafka consumer); over: 503.
    shim_sse_max_streams: int = 200
    # ...and per tenant, and per API key or user (one tenant cannot take them all); over: 429.
    shim_sse_max_streams_per_tenant: int = 50
    shim_sse_max_streams_per_principal: int = 10
    # A Last-Event-ID replays at most this many messages per partition and this far back; an
    # older one resumes at that bound and the stream says so (a `replay_truncated` event).
    shim_sse_replay_max_messages: int = 10_000
    shim_sse_replay_max_seconds: float = 3600.0
    # The shim's public base URL (https://notify.example.com), for checking provider
    # signatures over the URL they called (Twilio); unset: the URL of the request as received.
    shim_public_url: str | None = None
    # How long the shim waits at start-up for its views of config topics to catch up.
    shim_view_catchup_seconds: float = 30.0
    # Memory for the answers kept for Idempotency-Keys (each process holds all of them);
    # past it the oldest are evicted before their 24 h are up.
    shim_idempotency_max_bytes: int = 64 * 1024 * 1024

    log_level: str = "INFO"

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper_or_unset(cls, value: object) -> object:
        # `sasl_ssl` reads as SASL_SSL; an empty variable (KAFKA_SASL_MECHANISM=) as unset.
        if isinstance(value, str):
            return value.strip().upper() or None
        return value

    @model_validator(mode="after")
    def _kafka_security_is_consistent(self) -> Settings:
        # Refuse to start rather than silently connect without the security asked for.
        protocol = self.kafka_security_protocol
        sasl_set = [
            name
            for name, value in (
                ("KAFKA_SASL_MECHANISM", self.kafka_sasl_mechanism),
                ("KAFKA_SASL_USERNAME", self.kafka_sasl_username),
                ("KAFKA_SASL_PASSWORD", self.kafka_sasl_password),
            )
            if value
        ]
        ssl_set = [
            name
            for name, value in (
                ("KAFKA_SSL_CA_FILE", self.kafka_ssl_ca_file),
                ("KAFKA_SSL_CERT_FILE", self.kafka_ssl_cert_file),
                ("KAFKA_SSL_KEY_FILE", self.kafka_ssl_key_file),
            )
            if value
        ]
        if protocol.startswith("SASL_"):
            missing = {"KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"}
            missing -= set(sasl_set)
            if missing:
                raise ValueError(
                    f"KAFKA_SECURITY_PROTOCOL={protocol} needs {', '.join(sorted(missing))} "
                    "(mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)"
                )
        elif sasl_set:
            raise ValueError(
                f"{', '.join(sasl_set)} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                "SASL: set it to SASL_SSL (or SASL_PLAINTEXT)"
            )
        if ssl_set and not protocol.endswith("SSL"):
            raise ValueError(
                f"{', '.join(ssl_set)} set but KAFKA_SECURITY_PROTOCOL={protocol} does not use "
                "TLS: set it to SSL or SASL_SSL"
            )
        if bool(self.kafka_ssl_cert_file) != bool(self.kafka_ssl_key_file):
            raise ValueError("KAFKA_SSL_CERT_FILE and KAFKA_SSL_KEY_FILE go together: set both")
        return self

    def topic(self, name: str) -> str:
        """The physical topic name for a logical name from topics.yaml."""
        return f"{self.topic_prefix}{name}"

    @property
    def worker_app_id(self) -> str:
        """The Faust app id (consumer group) of this worker: one group per part."""
        if self.worker_lane in ("bulk", "status"):
            return f"{self.app_id}-{self.worker_lane}"
        return self.app_id

    @property
    def tables_app_id(self) -> str:
        """The `{app_id}` of this worker's table changelogs. The bulk lane has its own
        tables; the status part works on the main group's (the ones an all-in-one worker
        keeps), so splitting a deployment into parts keeps its status and batch state."""
        return f"{self.app_id}-bulk" if self.worker_lane == "bulk" else self.app_id

    @property
    def full_app_id(self) -> str:
        return f"{self.topic_prefix}{self.worker_app_id}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
