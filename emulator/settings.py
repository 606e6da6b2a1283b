"""Emulator settings: every knob, read from `GENRELAY_EMULATOR_*` and changeable at runtime.

Latencies are given as a distribution, either as JSON (`{"kind": "uniform", "min_ms": 100,
"max_ms": 900}`) or in the compact form used by the CLI and environment variables:
`fixed:250`, `uniform:100:900`, `lognormal:800:0.6` (median ms, sigma) or
`lognormal:800:0.6:5000` (with a cap in ms).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

FailureType = Literal[
    "request_timeout",
    "startup_timeout",
    "runner_scheduling_failure",
    "runner_connection_timeout",
    "runner_disconnected",
    "runner_connection_refused",
    "runner_connection_error",
    "runner_incomplete_response",
    "runner_server_error",
    "internal_error",
    "content_policy_violation",
    "no_media_generated",
    "internal_server_error",
    "generation_timeout",
    "downstream_service_error",
]

_DEFAULT_FAILURE: FailureType = "runner_server_error"


class FixedLatency(BaseModel):
    """Always the same delay."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["fixed"] = "fixed"
    ms: float = Field(default=0.0, ge=0)


class UniformLatency(BaseModel):
    """A delay drawn uniformly from `[min_ms, max_ms]`."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["uniform"] = "uniform"
    min_ms: float = Field(ge=0)
    max_ms: float = Field(ge=0)

    @model_validator(mode="after")
    def _ordered(self) -> UniformLatency:
        if self.max_ms < self.min_ms:
            raise ValueError("max_ms must not be below min_ms")
        return self


class LognormalLatency(BaseModel):
    """A long-tailed delay: `median_ms * exp(sigma * N(0, 1))`, optionally capped."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    kind: Literal["lognormal"] = "lognormal"
    median_ms: float = Field(gt=0)
    sigma: float = Field(default=0.5, ge=0)
    max_ms: float | None = Field(default=None, gt=0)


def _parse_latency(value: Any) -> Any:
    """Accept the compact `kind:a[:b[:c]]` form and JSON text besides plain mappings."""
    if isinstance(value, int | float):
        return {"kind": "fixed", "ms": value}
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("{"):
        return json.loads(text)
    kind, _, rest = text.partition(":")
    numbers = [float(part) for part in rest.split(":")] if rest else []
    fields = {"fixed": ("ms",), "uniform": ("min_ms", "max_ms")}.get(
        kind, ("median_ms", "sigma", "max_ms")
    )
    if len(numbers) > len(fields):
        raise ValueError(f"too many numbers in latency {value!r}")
    return {"kind": kind, **dict(zip(fields, numbers, strict=False))}


Latency = Annotated[
    FixedLatency | UniformLatency | LognormalLatency,
    Field(discriminator="kind"),
    BeforeValidator(_parse_latency),
    NoDecode,
]


def _parse_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string (environment variables, CLI)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


StrList = Annotated[list[str], BeforeValidator(_parse_list), NoDecode]
FailureTypes = Annotated[list[FailureType], BeforeValidator(_parse_list), NoDecode]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]

# Fields that only take effect when the server starts; PATCHing them at runtime is refused.
STARTUP_ONLY_FIELDS = frozenset({"host", "port", "public_base_url", "signing_seed_hex"})


class EmulatorSettings(BaseSettings):
    """Every emulator knob. Frozen: a change produces a new object (see `updated`)."""

    model_config = SettingsConfigDict(
        env_prefix="GENRELAY_EMULATOR_", frozen=True, extra="forbid", validate_default=True
    )

    # Where it listens; port 0 picks a free port.
    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    # The base URL put into returned URLs when it is reached through a proxy.
    public_base_url: str | None = None

    # `Authorization: Key <key>` must carry one of these.
    api_keys: StrList = Field(default_factory=lambda: ["emulator-key"], min_length=1)
    # Sent as `X-Fal-Webhook-User-Id` and signed into every webhook.
    user_id: str = "emulator-user"
    # More fal accounts, API key -> user id. As on fal, each account sees only its own
    # requests (another account's request id is "not found") and its webhooks are signed
    # with its own user id.
    accounts: dict[str, str] = Field(default_factory=dict)
    # Seeds every random choice (latencies, failures, webhook faults, 429 storms, seeds).
    seed: int = 0

    # Endpoint ids (shell-style patterns allowed) served by each fake model.
    image_endpoints: StrList = Field(
        default_factory=lambda: [
            "fal-ai/flux/schnell",
            "fal-ai/flux/dev",
            "fal-ai/flux-1/*",
            "fal-ai/flux-pro*",
            "fal-ai/fast-sdxl",
        ]
    )
    video_endpoints: StrList = Field(default_factory=lambda: ["fal-ai/fake-video"])
    # Models that return their file as a bare URL string: `{"video_url": "https://…"}`.
    video_url_endpoints: StrList = Field(default_factory=lambda: ["fal-ai/fake-video-url"])

    # Runners per endpoint: how many requests of one endpoint are IN_PROGRESS at once.
    concurrency: int = Field(default=64, ge=1)
    # Time a dispatched request still shows IN_QUEUE (runner acquisition), then run time.
    queue_latency: Latency = FixedLatency()
    run_latency: Latency = FixedLatency()
    # The first request after `cold_after_idle_s` without work on an endpoint waits this long.
    cold_start_ms: NonNegative = 0.0
    cold_after_idle_s: NonNegative = 300.0
    # Whether a running request stops when cancelled (fal leaves that to the app).
    runner_honours_cancel: bool = True

    # Fraction of attempts that fail, with a type drawn from `failure_types`.
    failure_rate: Rate = 0.0
    failure_types: FailureTypes = Field(default_factory=lambda: [_DEFAULT_FAILURE])
    # fal retries 503/504-class failures up to 10 attempts; each retry re-queues the request.
    internal_retries: int = Field(default=9, ge=0)

    # 429 storms: this fraction of submits is refused before anything is recorded.
    reject_rate: Rate = 0.0
    # Ambiguous submits: accepted and counted, then answered late or not at all.
    submit_response_delay_ms: NonNegative = 0.0
    submit_drop_rate: Rate = 0.0

    # Webhook delivery.
    webhook_retries: int = Field(default=3, ge=0)
    webhook_backoff_ms: NonNegative = 50.0
    webhook_backoff_max_ms: NonNegative = 2000.0
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_concurrency: int = Field(default=64, ge=1)
    webhook_delay: Latency = FixedLatency()
    webhook_loss_rate: Rate = 0.0
    webhook_duplicate_rate: Rate = 0.0

    # Output files stop being served this long after completion (None: never).
    file_url_lifetime_s: NonNegative | None = 3600.0
    # Results (and the request itself) are forgotten this long after completion; fal keeps
    # results of 10 KB or more for a shorter time.
    result_retention_s: NonNegative = 3600.0
    large_result_retention_s: NonNegative = 360.0
    large_result_bytes: int = Field(default=10_240, ge=0)
    # Bytes of rendered files kept in memory; evicted files are re-rendered on download.
    file_cache_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    # Accepted submissions remembered for `/_emulator/submissions` (counters stay exact).
    submission_log_limit: int = Field(default=1_000_000, ge=0)

    # The Platform API's records (fal.ai/docs/platform-apis/v1/models/...): a request is
    # listed in the request history this long after it arrived, and a billed request shows in
    # the billing events this long after it ended (fal documents neither lag).
    history_lag_s: NonNegative = 0.0
    billing_lag_s: NonNegative = 0.0
    # USD per billed unit, by endpoint id; others cost `default_unit_price`. A successful
    # request bills one unit per output file.
    unit_prices: dict[str, float] = Field(default_factory=dict)
    default_unit_price: NonNegative = 0.003
    # Whether the account has tagged billing reports (fal enables it per account).
    tagged_billing: bool = True

    # Seconds between `: ping` lines on a status stream.
    sse_ping_interval_s: float = Field(default=1.0, gt=0)
    # Hex seed of the first signing key (random when unset) and how long a rotated-out
    # public key stays in the JWKS.
    signing_seed_hex: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    key_rotation_overlap_s: NonNegative = 86_400.0

    def updated(self, changes: dict[str, Any]) -> EmulatorSettings:
        """A validated copy with `changes` applied; explicit values outrank the environment."""
        refused = STARTUP_ONLY_FIELDS.intersection(changes)
        if refused:
            raise ValueError(f"cannot change {sorted(refused)} while running")
        return type(self)(**{**self.model_dump(), **changes})
