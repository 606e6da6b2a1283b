"""genrelay's settings: one validated object, read from `GENRELAY_*` variables or a `.env` file.

Every address is configurable, so the same service runs against the embedded stack or against
real fal, Kafka and S3. Secrets are `SecretStr`: they never appear in logs or reprs.
"""

from __future__ import annotations

import ipaddress
import json
from datetime import timedelta
from pathlib import Path
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from genrelay.consumer.lifecycle import Policy
from genrelay.schemas.fields import BucketName
from genrelay.schemas.topics import Topics

# Room for what genrelay adds to a request record: its ledger state, or dead-letter headers.
RECORD_HEADROOM = 64 * 1024


class Settings(BaseSettings):
    """All of genrelay's configuration (env prefix `GENRELAY_`)."""

    model_config = SettingsConfigDict(
        env_prefix="GENRELAY_", env_file=".env", extra="ignore", frozen=True
    )

    # Kafka
    kafka_bootstrap: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers")
    group_id: str = Field("genrelay", description="consumer group shared by all replicas")
    instance_id: str | None = Field(None, description="static group membership id (optional)")
    session_timeout_ms: int = Field(
        10_000, ge=6_000, description="how soon the group notices a dead replica"
    )
    kafka_metadata_max_age_ms: int = Field(
        30_000, ge=1000, description="how soon changed topics (added partitions) are noticed"
    )
    topic_requests: str = Field("genrelay.requests", description="submit and cancel commands")
    topic_ledger: str = Field("genrelay.ledger", description="per-key state (compacted)")
    topic_webhooks: str = Field("genrelay.webhooks", description="verified webhook deliveries")
    topic_completions: str = Field("genrelay.completions", description="one terminal event per key")
    topic_progress: str = Field("genrelay.progress", description="queue position, started")
    topic_dead_letter: str = Field(
        "genrelay.dead-letter", description="refused records with reason headers"
    )
    topic_costs: str = Field(
        "genrelay.costs", description="what fal billed each key (compacted; `genrelay audit`)"
    )
    topic_budgets: str = Field(
        "genrelay.budgets", description="spend caps per tenant (compacted; `genrelay budgets`)"
    )
    topic_spend: str = Field(
        "genrelay.spend", description="each partition's spend per tenant and period (compacted)"
    )
    extra_input_topics: list[str] = Field(
        default_factory=list, description="further topics whose records are re-keyed into requests"
    )
    partitions: int = Field(6, ge=1, description="partition count when genrelay creates topics")
    replication_factor: int = Field(1, ge=1, description="replication when genrelay creates topics")
    create_topics: bool = Field(True, description="create missing topics at start")

    # Provider (fal)
    fal_queue_url: str = Field("https://queue.fal.run", description="fal queue base URL")
    fal_key: SecretStr = Field(SecretStr(""), description="fal API key (Authorization: Key …)")
    fal_jwks_url: str = Field(
        "https://rest.alpha.fal.ai/.well-known/jwks.json", description="webhook signing keys"
    )

    # Webhook receiver
    http_host: str = Field("127.0.0.1", description="address the webhook receiver binds")
    http_port: int = Field(
        8080, ge=0, le=65535, description="the public listener: webhooks and health probes only"
    )
    admin_host: str = Field(
        "127.0.0.1",
        description="address the admin listener binds (status page, metrics, OpenAPI)",
    )
    admin_port: int = Field(8081, ge=0, le=65535, description="the admin listener's port")
    admin_token: SecretStr = Field(
        SecretStr(""),
        description="bearer token the admin listener requires (needed off loopback)",
    )
    fal_user_id: str | None = Field(
        None,
        description="your fal user id: webhooks signed for any other account are refused",
    )
    fal_platform_url: str = Field(
        "https://api.fal.ai/v1", description="fal's Platform API (request history, billing)"
    )
    output_lifetime_seconds: float | None = Field(
        86400.0,
        ge=60,
        description="how long fal keeps output files (sent on every submit); unset: the"
        " account's default",
    )
    fetch_result_on_webhook: bool = Field(
        True,
        description="read each result from fal even when its webhook carries it (only the"
        " result's headers tell the billed units)",
    )
    prices: dict[str, float] = Field(
        default_factory=dict,
        description="USD per billed unit by endpoint (JSON); others come from fal's price list",
    )
    disable_fallbacks: bool = Field(
        False, description="forbid fal to reroute a request to an equivalent endpoint"
    )
    public_webhook_url: str | None = Field(
        None, description="public base URL of the receiver; unset means polling only"
    )
    webhook_secret: SecretStr = Field(
        SecretStr(""), description="HMAC secret binding webhook URLs to keys"
    )
    max_webhook_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="larger webhook bodies get 413"
    )

    # Observability
    service_name: str = Field("genrelay", description="service name on traces and metrics")
    otlp_endpoint: str | None = Field(
        None, description="OTLP/HTTP base URL for traces (e.g. http://127.0.0.1:4318); unset: off"
    )
    log_level: str = Field("INFO", description="root log level")
    log_json: bool = Field(True, description="JSON lines (else readable text)")

    # Object store
    s3_endpoint: str = Field("127.0.0.1:9000", description="S3 endpoint host:port")
    s3_access_key: SecretStr = Field(SecretStr(""), description="S3 access key")
    s3_secret_key: SecretStr = Field(SecretStr(""), description="S3 secret key")
    s3_secure: bool = Field(False, description="use HTTPS for S3")
    s3_region: str = Field("us-east-1", description="S3 region (saves a location lookup)")
    bucket: BucketName = Field("genrelay", description="bucket when a request names none")
    prefix: str = Field("", description="key prefix when a request names none")
    upload_threads: int = Field(
        8,
        ge=1,
        description="threads of the blocking S3 client: uploads over 8 MiB (multipart), "
        "bucket checks",
    )

    # Downloads
    download_hosts: list[str] = Field(
        default_factory=lambda: ["fal.media", "*.fal.media"],
        description="hosts output files may be downloaded from",
    )
    allow_private_downloads: bool = Field(
        False, description="allow loopback/private addresses (the local emulator only)"
    )
    max_concurrent_stores: int = Field(
        32, ge=1, description="keys copying their files at once (each spools up to 8 MiB)"
    )
    max_download_bytes: int = Field(
        512 * 1024 * 1024, ge=1, description="larger output files are refused"
    )

    # Limits
    max_in_flight: int = Field(1000, ge=1, description="jobs between submit and outcome")
    max_in_flight_per_endpoint: int = Field(500, ge=1, description="the same, per endpoint")
    max_in_flight_per_tenant: int | None = Field(
        None, ge=1, description="the same, per tenant (a request's `tenant`); unset: no limit"
    )
    tenant_weights: dict[str, float] = Field(
        default_factory=dict,
        description='each tenant\'s weight in sharing the slots (JSON, `{"tenant": 3}`);'
        " others weigh 1",
    )
    max_buffered_records: int = Field(5000, ge=1, description="records waiting for a slot")
    max_buffered_bytes: int = Field(
        64 * 1024 * 1024, ge=1, description="record bytes read but not yet durable"
    )
    max_record_bytes: int = Field(
        960 * 1024, ge=256, description="larger request records are dead-lettered"
    )
    kafka_max_request_bytes: int = Field(
        1024 * 1024,
        ge=64 * 1024,
        description="largest record genrelay produces; every topic it writes must accept it",
    )
    max_submit_attempts: int = Field(
        8, ge=1, description="POSTs per key that provably never arrived, then failed"
    )
    step_max_failures: int = Field(
        20, ge=1, description="failures in a row of a poll, fetch or store before the key fails"
    )
    step_deadline_seconds: float = Field(
        900.0, gt=0, description="how long a poll, fetch or store may keep failing, then fails"
    )

    # Timing
    poll_grace_seconds: float = Field(30.0, ge=0, description="wait for a webhook before polling")
    poll_max_interval_seconds: float = Field(
        30.0, gt=0, description="longest pause between two polls of a job"
    )
    poll_rate_per_second: float = Field(
        200.0, gt=0, description="most status polls a replica sends per second (spreads bursts)"
    )
    unknown_grace_seconds: float = Field(
        600.0, ge=0, description="how long an ambiguous submit waits for a webhook"
    )
    resubmit_unknown: bool = Field(
        False, description="re-post an ambiguous submit nobody adopted (may pay twice)"
    )
    reconcile_from_history: bool = Field(
        True,
        description="settle ambiguous submits from fal's request history (adopt, or re-post"
        " once it proves the request never arrived)",
    )
    history_lag_seconds: float = Field(
        120.0,
        gt=0,
        description="longest time fal's request history takes to list a request it received",
    )
    clock_skew_seconds: float = Field(
        30.0,
        ge=0,
        description="how far fal's clock may be from ours (plus a request's trip), when its"
        " records must prove a request never arrived",
    )
    start_timeout_seconds: float | None = Field(
        600.0,
        ge=1,
        description="fal must start each request within this or never (X-Fal-Request-Timeout)"
        "; also bounds how long an ambiguous submit stays open. Unset: only `deadline`s",
    )
    dedup_window_days: float = Field(7.0, gt=0, description="how long a key is remembered")
    state_dir: Path = Field(
        Path("/tmp/genrelay-state"),
        description="local state stores; kept across restarts when GENRELAY_INSTANCE_ID is set",
    )
    commit_interval_seconds: float = Field(1.0, gt=0, description="how often offsets commit")
    shutdown_grace_seconds: float = Field(
        20.0, ge=0, description="SIGTERM: time for running steps to finish"
    )

    @model_validator(mode="after")
    def _records_fit(self) -> Self:
        # A request is kept in its ledger state and copied whole into a dead letter: both
        # add to its size, and both must still fit what the producer may send.
        room = self.kafka_max_request_bytes - RECORD_HEADROOM
        if self.max_record_bytes > room:
            raise ValueError(
                f"GENRELAY_MAX_RECORD_BYTES ({self.max_record_bytes}) must leave "
                f"{RECORD_HEADROOM} bytes below GENRELAY_KAFKA_MAX_REQUEST_BYTES "
                f"({self.kafka_max_request_bytes}): at most {room}"
            )
        return self

    @model_validator(mode="after")
    def _admin_is_private(self) -> Self:
        # The admin surface shows every customer's keys and metadata: off loopback it is
        # served only behind a token.
        if not _loopback(self.admin_host) and not self.admin_token.get_secret_value():
            raise ValueError(
                f"GENRELAY_ADMIN_HOST={self.admin_host} is reachable from other hosts: set"
                " GENRELAY_ADMIN_TOKEN (at least 32 characters), or bind it to 127.0.0.1"
            )
        token = self.admin_token.get_secret_value()
        if token and len(token) < 32:
            raise ValueError("GENRELAY_ADMIN_TOKEN must be at least 32 characters")
        return self

    @field_validator("tenant_weights")
    @classmethod
    def _weights_positive(cls, value: dict[str, float]) -> dict[str, float]:
        if bad := sorted(tenant for tenant, weight in value.items() if not weight > 0):
            raise ValueError(f"tenant weights must be above 0 (GENRELAY_TENANT_WEIGHTS): {bad}")
        return value

    @field_validator("fal_queue_url")
    @classmethod
    def _queue_without_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("public_webhook_url")
    @classmethod
    def _webhook_without_slash(cls, value: str | None) -> str | None:
        # A blank variable means polling only, like an unset one.
        return value.rstrip("/") or None if value else None

    def to_env(self) -> dict[str, str]:
        """These settings as `GENRELAY_*` variables, e.g. for a replica in a child process."""
        env: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list | dict | bool):
                value = json.dumps(value)
            env[f"GENRELAY_{name.upper()}"] = str(value)
        return env

    @classmethod
    def reference(cls) -> str:
        """Every setting as a markdown table (variable, default, meaning): the README's."""
        rows = ["| variable | default | meaning |", "|---|---|---|"]
        for name, field in cls.model_fields.items():
            default = field.get_default(call_default_factory=True)
            if isinstance(default, SecretStr):
                shown = "(secret)"
            elif default is None:
                shown = "unset"
            else:
                shown = f"`{json.dumps(default) if isinstance(default, list | bool) else default}`"
            rows.append(f"| `GENRELAY_{name.upper()}` | {shown} | {field.description} |")
        return "\n".join(rows)

    @property
    def topics(self) -> Topics:
        return Topics(
            requests=self.topic_requests,
            ledger=self.topic_ledger,
            webhooks=self.topic_webhooks,
            completions=self.topic_completions,
            progress=self.topic_progress,
            dead_letter=self.topic_dead_letter,
            costs=self.topic_costs,
            budgets=self.topic_budgets,
            spend=self.topic_spend,
        )

    @property
    def policy(self) -> Policy:
        return Policy(
            max_submit_attempts=self.max_submit_attempts,
            resubmit_unknown=self.resubmit_unknown,
            max_step_failures=self.step_max_failures,
            step_deadline=timedelta(seconds=self.step_deadline_seconds),
            unknown_grace=timedelta(seconds=self.unknown_grace_seconds),
            start_timeout=(
                None
                if self.start_timeout_seconds is None
                else timedelta(seconds=self.start_timeout_seconds)
            ),
            reconcile=self.reconcile_from_history,
            history_lag=timedelta(seconds=self.history_lag_seconds),
            clock_slack=timedelta(seconds=self.clock_skew_seconds),
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere
