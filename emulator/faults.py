"""Fault decisions: seeded rates from the settings plus explicitly armed counts.

Rates (`failure_rate`, `webhook_loss_rate`, ...) are drawn per submission sequence number, so
a given seed always hits the same submissions. Armed counts ("fail the next 2 attempts with
runner_disconnected", "lose the next webhook") are consumed in event order and take
precedence; tests use them when they need one exact fault.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from genrelay.emulator.randomness import Dice
from genrelay.emulator.settings import EmulatorSettings, FailureType

Count = Field(default=0, ge=0)


class ArmRequest(BaseModel):
    """Faults to add to the armed ones (`POST /_emulator/faults`, `Emulator.arm`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    fail_next: list[FailureType] = Field(default_factory=list)
    reject_submits: int = Count
    reject_for_s: float = Field(default=0.0, ge=0)
    drop_submit_responses: int = Count
    # The connection is reset before the gateway reads the submit: never received, not paid.
    reset_submits: int = Count
    gateway_error_submits: int = Count
    delay_submit_responses: int = Count
    delay_submit_ms: float = Field(default=0.0, ge=0)
    lose_webhooks: int = Count
    duplicate_webhooks: int = Count
    delay_webhooks: int = Count
    delay_webhooks_ms: float = Field(default=0.0, ge=0)
    payload_error_webhooks: int = Count


@dataclass(slots=True)
class ArmedFaults:
    """Faults that hit the next N occurrences of an event, then disarm."""

    fail_next: deque[str] = field(default_factory=deque)
    reject_submits: int = 0
    reject_until: float = 0.0
    drop_submit_responses: int = 0
    reset_submits: int = 0
    gateway_error_submits: int = 0
    delay_submit_responses: int = 0
    delay_submit_ms: float = 0.0
    lose_webhooks: int = 0
    duplicate_webhooks: int = 0
    delay_webhooks: int = 0
    delay_webhooks_ms: float = 0.0
    payload_error_webhooks: int = 0

    def as_json(self) -> dict[str, object]:
        return {
            "fail_next": list(self.fail_next),
            "reject_submits": self.reject_submits,
            "reject_for_s": max(0.0, self.reject_until - time.monotonic()),
            "drop_submit_responses": self.drop_submit_responses,
            "reset_submits": self.reset_submits,
            "gateway_error_submits": self.gateway_error_submits,
            "delay_submit_responses": self.delay_submit_responses,
            "delay_submit_ms": self.delay_submit_ms,
            "lose_webhooks": self.lose_webhooks,
            "duplicate_webhooks": self.duplicate_webhooks,
            "delay_webhooks": self.delay_webhooks,
            "delay_webhooks_ms": self.delay_webhooks_ms,
            "payload_error_webhooks": self.payload_error_webhooks,
        }


@dataclass(frozen=True, slots=True)
class SubmitFate:
    """What happens to the response of an accepted submit."""

    drop: bool = False
    # A gateway in front of the queue forwarded the submit, then answered 504 itself.
    gateway_error: bool = False
    delay_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class WebhookPlan:
    """What happens to the webhook of one finished request."""

    lose: bool = False
    duplicate: bool = False
    delay_ms: float = 0.0
    payload_error: bool = False


class Faults:
    """Decides, per event, whether and how it goes wrong."""

    def __init__(self, settings: EmulatorSettings) -> None:
        self.armed = ArmedFaults()
        self.reconfigure(settings)

    def reconfigure(self, settings: EmulatorSettings) -> None:
        self.settings = settings
        self.dice = Dice(settings.seed)

    def disarm(self) -> None:
        self.armed = ArmedFaults()

    def arm(self, request: ArmRequest) -> None:
        """Add armed faults; delays given here replace the armed delays."""
        armed = self.armed
        armed.fail_next.extend(request.fail_next)
        armed.reject_submits += request.reject_submits
        if request.reject_for_s > 0:
            armed.reject_until = max(armed.reject_until, time.monotonic() + request.reject_for_s)
        armed.drop_submit_responses += request.drop_submit_responses
        armed.reset_submits += request.reset_submits
        armed.gateway_error_submits += request.gateway_error_submits
        armed.delay_submit_responses += request.delay_submit_responses
        if request.delay_submit_responses:
            armed.delay_submit_ms = request.delay_submit_ms
        armed.lose_webhooks += request.lose_webhooks
        armed.duplicate_webhooks += request.duplicate_webhooks
        armed.delay_webhooks += request.delay_webhooks
        if request.delay_webhooks:
            armed.delay_webhooks_ms = request.delay_webhooks_ms
        armed.payload_error_webhooks += request.payload_error_webhooks

    def reset_submit(self) -> bool:
        """Whether to cut the next submit's connection before receiving it."""
        return _take(self.armed, "reset_submits")

    def reject_submit(self, attempt: int) -> bool:
        """A 429 storm: armed window or count first, then `reject_rate` per submit attempt."""
        armed = self.armed
        if time.monotonic() < armed.reject_until:
            return True
        if armed.reject_submits > 0:
            armed.reject_submits -= 1
            return True
        return self.dice.chance(self.settings.reject_rate, "reject", attempt)

    def submit_fate(self, seq: int) -> SubmitFate:
        armed = self.armed
        if armed.drop_submit_responses > 0:
            armed.drop_submit_responses -= 1
            return SubmitFate(drop=True)
        if armed.gateway_error_submits > 0:
            armed.gateway_error_submits -= 1
            return SubmitFate(gateway_error=True)
        if armed.delay_submit_responses > 0:
            armed.delay_submit_responses -= 1
            return SubmitFate(delay_ms=armed.delay_submit_ms)
        if self.dice.chance(self.settings.submit_drop_rate, "drop-submit", seq):
            return SubmitFate(drop=True)
        return SubmitFate(delay_ms=self.settings.submit_response_delay_ms)

    def attempt_failure(self, seq: int, attempt: int) -> str | None:
        """The failure type of this attempt, or None if it succeeds."""
        if self.armed.fail_next:
            return self.armed.fail_next.popleft()
        settings = self.settings
        if not settings.failure_types or not self.dice.chance(
            settings.failure_rate, "fail", seq, attempt
        ):
            return None
        pick = self.dice.integer("fail-type", seq, attempt) % len(settings.failure_types)
        return settings.failure_types[pick]

    def webhook_plan(self, seq: int) -> WebhookPlan:
        armed, settings, dice = self.armed, self.settings, self.dice
        lose = _take(armed, "lose_webhooks") or dice.chance(settings.webhook_loss_rate, "lose", seq)
        duplicate = _take(armed, "duplicate_webhooks") or dice.chance(
            settings.webhook_duplicate_rate, "duplicate", seq
        )
        if _take(armed, "delay_webhooks"):
            delay_ms = armed.delay_webhooks_ms
        else:
            delay_ms = dice.latency_ms(settings.webhook_delay, "webhook-delay", seq)
        payload_error = _take(armed, "payload_error_webhooks")
        return WebhookPlan(lose, duplicate, delay_ms, payload_error)


def _take(armed: ArmedFaults, name: str) -> bool:
    """Consume one armed occurrence of the counter `name`, if any is left."""
    left: int = getattr(armed, name)
    if left <= 0:
        return False
    setattr(armed, name, left - 1)
    return True
