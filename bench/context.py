"""What every scenario shares: the sizes of this run, the stack, names and the infra's pids."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

from genrelay.bench.measure import pid_listening_on
from genrelay.deploy.local.stack import StackInfo
from genrelay.schemas.topics import Topics


@dataclass(frozen=True)
class Plan:
    """How big each scenario is. `full()` is what the figures in the README come from."""

    jobs: int = 10_000
    warmup: int = 200
    paced_jobs: int = 2_000
    # The latency phase offers this share of the throughput just measured, so the hops it
    # reports are genrelay's own and not time spent queueing behind a saturated CPU.
    paced_share: float = 0.5
    concurrency: int = 500
    # 12 splits evenly over 1, 2 and 4 replicas.
    partitions: int = 12
    in_flight_jobs: int = 100_000
    ledger_keys: int = 1_000_000
    replicas: tuple[int, ...] = (1, 2, 4)
    smoke: bool = False
    # Share of webhooks the emulator loses (those keys finish by polling).
    webhook_loss: float = 0.0
    # Keys queued at once behind an endpoint limit of `backlog_limit` jobs in flight.
    backlog_jobs: int = 10_000
    backlog_limit: int = 50
    # Jobs and jobs in flight against a provider with realistic run times and faults.
    realistic_jobs: int = 2_000
    realistic_concurrency: int = 1_000

    @classmethod
    def full(cls) -> Plan:
        return cls()

    @classmethod
    def smoke_test(cls) -> Plan:
        """A few hundred jobs per scenario: proves the bench works, says nothing of speed."""
        return cls(
            jobs=200,
            warmup=10,
            paced_jobs=100,
            in_flight_jobs=500,
            ledger_keys=20_000,
            replicas=(1, 2),
            backlog_jobs=200,
            realistic_jobs=100,
            smoke=True,
        )

    def with_jobs(self, jobs: int) -> Plan:
        return replace(self, jobs=jobs, paced_jobs=min(self.paced_jobs, jobs))

    def with_concurrency(self, concurrency: int) -> Plan:
        return replace(self, concurrency=concurrency)

    def with_webhook_loss(self, share: float) -> Plan:
        return replace(self, webhook_loss=share)


@dataclass
class Bench:
    """One bench run: the stack it measures on, its plan, and where child logs go."""

    stack: StackInfo
    plan: Plan
    workdir: Path
    profile_dir: Path | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:6])

    def topics(self, scenario: str) -> Topics:
        """Fresh topic names for one scenario, so no run sees another's records."""
        base = f"bench-{self.run_id}-{scenario}"
        return Topics(
            requests=f"{base}.requests",
            ledger=f"{base}.ledger",
            webhooks=f"{base}.webhooks",
            completions=f"{base}.completions",
            progress=f"{base}.progress",
            dead_letter=f"{base}.dead-letter",
            costs=f"{base}.costs",
            budgets=f"{base}.budgets",
            spend=f"{base}.spend",
        )

    def keys(self, scenario: str, phase: str, count: int) -> list[str]:
        """Unique idempotency keys; they also travel as the prompt, so the emulator's log
        of paid submissions can be counted per key."""
        return [f"bench-{self.run_id}-{scenario}-{phase}-{n:07d}" for n in range(count)]

    def infra_pids(self) -> dict[str, int]:
        """The broker's and MinIO's pids when they run on this machine (for CPU shares)."""
        found: dict[str, int] = {}
        for name, address in (
            ("kafka", self.stack.kafka_bootstrap.split(",")[0]),
            ("minio", self.stack.s3_endpoint),
        ):
            pid = pid_listening_on(int(address.rsplit(":", 1)[1]))
            if pid is not None:
                found[name] = pid
        return found
