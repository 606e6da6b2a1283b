"""The scenario catalogue: what load each runs, what it breaks, and how big it is.

Every scenario has a full size (run by hand, minutes) and a smoke size (CI, seconds); both are
bounded in jobs and in wall-clock time. A scenario's `inject` waits until work is in flight,
then injects its faults through the `Injector`, which heals each one on the way out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from genrelay.chaos.faults import Injector
from genrelay.chaos.load import IMAGE_ENDPOINTS, VIDEO_ENDPOINT, Load
from genrelay.chaos.toxiproxy import Toxic


@dataclass(frozen=True)
class Size:
    """How big one run is: the load, one fault's length, repetitions, and the wall-clock cap
    (from the first request to the last event; setup and teardown come on top)."""

    load: Load
    cap_s: float
    fault_s: float
    repeat: int = 1
    gap_s: float = 0.0

    def with_jobs(self, jobs: int) -> Size:
        """The same arrival rate with another job count; the cap grows with the load."""
        scale = jobs / self.load.jobs
        seconds = self.load.seconds * scale
        load = replace(self.load, jobs=jobs, seconds=seconds)
        return replace(self, load=load, cap_s=self.cap_s + max(0.0, seconds - self.load.seconds))


Inject = Callable[[Injector, Size], Coroutine[Any, Any, None]]


@dataclass(frozen=True)
class Scenario:
    """One named fault scenario."""

    name: str
    summary: str
    inject: Inject
    full: Size
    smoke: Size
    replicas: int = 1
    # Needs Toxiproxy between the relays and the provider and MinIO (and Kafka, below).
    network: bool = False
    kafka_proxy: bool = False
    # Stops Kafka or MinIO: only on servers the run owns.
    stops_servers: bool = False
    emulator: Mapping[str, Any] = field(default_factory=dict)
    relay: Mapping[str, Any] = field(default_factory=dict)


# --- process faults ---------------------------------------------------------------------


async def _kill_replicas(f: Injector, size: Size) -> None:
    await f.produced(0.1)
    for n in range(size.repeat):
        await f.kill_replica(n % len(f.replicas), down_s=size.fault_s)
        await _pause(size.gap_s)


async def _paused_replica(f: Injector, size: Size) -> None:
    await f.produced(0.3)
    for _ in range(size.repeat):
        # Some keys are in a 429 back-off when the replica stops, others wait for a slot.
        storm = asyncio.create_task(f.rate_limit_storm(size.fault_s / 2))
        try:
            await asyncio.sleep(min(1.0, size.fault_s / 4))
            await f.pause_replica(0, size.fault_s)
        finally:
            await storm
        await _pause(size.gap_s)


async def _broker_restart(f: Injector, size: Size) -> None:
    await f.produced(0.25)
    for _ in range(size.repeat):
        await f.outage("kafka", size.fault_s)
        await _pause(size.gap_s)


async def _broker_kill(f: Injector, size: Size) -> None:
    await f.produced(0.2)
    for _ in range(size.repeat):
        await f.outage("kafka", size.fault_s, hard=True)
        await _pause(size.gap_s)


async def _minio_down(f: Injector, size: Size) -> None:
    await f.produced(0.2)
    await f.outage("minio", size.fault_s)


async def _rate_limit_storm(f: Injector, size: Size) -> None:
    await f.produced(0.2)
    for _ in range(size.repeat):
        await f.rate_limit_storm(size.fault_s)
        await _pause(size.gap_s)
    f.notes["429 answers"] = int(f.emulator.stats()["rejected_submits"])


async def _cold_starts(f: Injector, size: Size) -> None:
    # The load's bursts rotate over endpoints that idle in between: each burst meets a cold
    # runner. The faults are the boots the provider reports, each lasting `cold_start_ms`.
    boot_s = float(f.emulator.settings.cold_start_ms) / 1000
    seen = 0
    quiet_since = f.now()
    while f.progress.produced < f.progress.total or f.now() - quiet_since < boot_s + 1:
        count = int(f.emulator.stats()["cold_starts"])
        for _ in range(count - seen):
            quiet_since = f.now()
            f.observed(f"cold start {boot_s:g} s", "provider", quiet_since, boot_s)
        seen = count
        await _pause(0.2)
    f.notes["cold starts"] = seen


# --- network faults (Toxiproxy) ---------------------------------------------------------


async def _provider_latency(f: Injector, size: Size) -> None:
    await f.produced(0.1)
    for _ in range(size.repeat):
        slow = [Toxic.latency(400, 300), Toxic.latency(100, 50, stream="upstream")]
        await f.toxics("provider", slow, size.fault_s)
        await _pause(size.gap_s)


async def _provider_reset(f: Injector, size: Size) -> None:
    await f.produced(0.1)
    for _ in range(size.repeat):
        resets = [
            Toxic.reset_peer(stream="upstream", toxicity=0.3),
            Toxic.reset_peer(stream="downstream", toxicity=0.3),
        ]
        await f.flapping("provider", resets, size.fault_s)
        await _pause(size.gap_s)


# Each cuts the answer to a request the provider has received: reset, silence then close,
# and a truncated response.
_CUTS = (
    Toxic.reset_peer(stream="downstream"),
    Toxic.timeout(3000, stream="downstream"),
    Toxic.limit_data(64, stream="downstream"),
)


async def _submit_cut(f: Injector, size: Size) -> None:
    await f.produced(0.1)
    for n in range(size.repeat):
        await f.toxic("provider", _CUTS[n % len(_CUTS)], size.fault_s)
        await _pause(size.gap_s)


async def _gateway_504(f: Injector, size: Size) -> None:
    await f.produced(0.1)
    # One submit in five, early in the load (the armed answers go to the next submits).
    await f.gateway_errors(max(2, size.load.jobs // 5))
    f.notes["gateway 504s"] = int(f.emulator.stats()["gateway_error_submit_responses"])


async def _minio_slow(f: Injector, size: Size) -> None:
    await f.produced(0.1)
    slow = [Toxic.bandwidth(16, stream="upstream"), Toxic.latency(200, 100)]
    await f.toxics("minio", slow, size.fault_s)


async def _minio_cut(f: Injector, size: Size) -> None:
    await f.produced(0.1)
    cuts = (Toxic.reset_peer(stream="downstream"), Toxic.timeout(2000, stream="upstream"))
    for n in range(size.repeat):
        await f.toxic("minio", cuts[n % len(cuts)], size.fault_s)
        await _pause(size.gap_s)


async def _kafka_latency(f: Injector, size: Size) -> None:
    await f.produced(0.1)
    slow = [Toxic.latency(150, 100), Toxic.latency(50, 25, stream="upstream")]
    await f.toxics("kafka", slow, size.fault_s)


async def _kafka_reset(f: Injector, size: Size) -> None:
    await f.produced(0.1)
    for _ in range(size.repeat):
        resets = [Toxic.reset_peer(stream="upstream"), Toxic.reset_peer(stream="downstream")]
        await f.toxics("kafka", resets, size.fault_s)
        await _pause(size.gap_s)


async def _pause(seconds: float) -> None:
    await asyncio.sleep(seconds)


def _load(jobs: int, seconds: float, **more: Any) -> Load:
    return Load(jobs=jobs, seconds=seconds, **more)


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "kill-replicas",
        "3 replicas behind the webhook front; kill -9 one every few seconds, restart it",
        _kill_replicas,
        full=Size(_load(500, 50), cap_s=240, fault_s=1.0, repeat=6, gap_s=3.0),
        smoke=Size(_load(30, 6), cap_s=120, fault_s=0.5, repeat=2, gap_s=2.0),
        replicas=3,
    ),
    Scenario(
        "paused-replica",
        "2 replicas with few slots; one is frozen (SIGSTOP) during a 429 storm for longer than "
        "the session timeout, its partitions move, then it wakes (SIGCONT) still believing "
        "it owns them: it must neither write their ledger nor post for their keys",
        _paused_replica,
        full=Size(_load(400, 40), cap_s=300, fault_s=12.0, repeat=2, gap_s=6.0),
        smoke=Size(_load(40, 5), cap_s=150, fault_s=10.0),
        replicas=2,
        relay={"max_in_flight": 6},
    ),
    Scenario(
        "broker-restart",
        "2 replicas; the broker is stopped (SIGTERM) mid-flight, started again 12 s later",
        _broker_restart,
        full=Size(_load(400, 80), cap_s=360, fault_s=12.0, repeat=2, gap_s=3.0),
        smoke=Size(_load(30, 8), cap_s=150, fault_s=5.0),
        replicas=2,
        stops_servers=True,
    ),
    Scenario(
        "broker-kill",
        "2 replicas; the broker is killed (kill -9) mid-flight, started again 10 s later",
        _broker_kill,
        full=Size(_load(400, 60), cap_s=300, fault_s=10.0, repeat=2, gap_s=5.0),
        smoke=Size(_load(30, 8), cap_s=150, fault_s=4.0),
        replicas=2,
        stops_servers=True,
    ),
    Scenario(
        "broker-long-outage",
        "2 replicas; the broker is killed mid-flight and kept down 45 s, past the group's "
        "session timeout and the producer's request timeout",
        _broker_kill,
        full=Size(_load(400, 60), cap_s=360, fault_s=45.0),
        smoke=Size(_load(30, 8), cap_s=240, fault_s=45.0),
        replicas=2,
        stops_servers=True,
    ),
    Scenario(
        "minio-down",
        "MinIO is stopped for 30 s while results are being stored",
        _minio_down,
        full=Size(_load(300, 40), cap_s=240, fault_s=30.0),
        smoke=Size(_load(30, 6), cap_s=120, fault_s=8.0),
        stops_servers=True,
    ),
    Scenario(
        "429-storm",
        "every submit is answered 429 for a while; submits back off and retry",
        _rate_limit_storm,
        full=Size(_load(400, 40), cap_s=240, fault_s=20.0),
        smoke=Size(_load(30, 6), cap_s=120, fault_s=5.0),
    ),
    Scenario(
        "cold-starts",
        "bursts on endpoints that idled in between: each burst waits for a 20 s cold start",
        _cold_starts,
        full=Size(_load(240, 100, bursts=6, endpoints=IMAGE_ENDPOINTS), cap_s=300, fault_s=0),
        smoke=Size(_load(30, 16, bursts=2, endpoints=IMAGE_ENDPOINTS), cap_s=150, fault_s=0),
        emulator={"cold_start_ms": 20_000, "cold_after_idle_s": 3.0},
    ),
    Scenario(
        "provider-latency",
        "Toxiproxy adds 400±300 ms to every answer from the provider (100 ms to requests)",
        _provider_latency,
        full=Size(_load(400, 40), cap_s=240, fault_s=15.0, repeat=2, gap_s=5.0),
        smoke=Size(_load(30, 6), cap_s=120, fault_s=5.0),
        network=True,
    ),
    Scenario(
        "provider-reset",
        "Toxiproxy resets 30 % of provider connections (drawn again every second), "
        "requests and answers alike",
        _provider_reset,
        full=Size(_load(400, 40), cap_s=300, fault_s=4.0, repeat=4, gap_s=4.0),
        smoke=Size(_load(30, 6), cap_s=150, fault_s=3.0),
        network=True,
    ),
    Scenario(
        "submit-cut",
        "Toxiproxy cuts the provider's answers (reset, silence, truncation) after it got the "
        "request: the relay must adopt each ambiguous submit from its webhook, never re-POST",
        _submit_cut,
        full=Size(_load(400, 48), cap_s=300, fault_s=3.0, repeat=6, gap_s=4.0),
        smoke=Size(_load(30, 8), cap_s=150, fault_s=2.0, repeat=3, gap_s=1.0),
        network=True,
    ),
    Scenario(
        "gateway-504",
        "A gateway in front of fal answers 504 (no x-fal-request-id) to submits fal already "
        "accepted and billed: each is ambiguous, adopted from its webhook, never re-posted",
        _gateway_504,
        full=Size(_load(400, 40), cap_s=300, fault_s=0),
        smoke=Size(_load(30, 6), cap_s=150, fault_s=0),
    ),
    Scenario(
        "minio-slow",
        "Toxiproxy limits uploads to MinIO to 16 KB/s per connection, plus 200±100 ms",
        _minio_slow,
        full=Size(
            _load(
                200,
                40,
                endpoints=(IMAGE_ENDPOINTS[0], VIDEO_ENDPOINT),
                image_side=512,
                video_frames=96,
            ),
            cap_s=300,
            fault_s=30.0,
        ),
        smoke=Size(
            _load(20, 6, endpoints=(IMAGE_ENDPOINTS[0], VIDEO_ENDPOINT), image_side=512),
            cap_s=150,
            fault_s=8.0,
        ),
        network=True,
    ),
    Scenario(
        "minio-cut",
        "Toxiproxy cuts MinIO's answers to uploads, or stalls uploads until the connection "
        "closes: a retried upload must land on the same key",
        _minio_cut,
        full=Size(_load(300, 40), cap_s=240, fault_s=4.0, repeat=4, gap_s=4.0),
        smoke=Size(_load(30, 6), cap_s=120, fault_s=2.0, repeat=2, gap_s=1.0),
        network=True,
    ),
    Scenario(
        "kafka-latency",
        "Toxiproxy adds 150±100 ms to the broker's answers to the relays (50 ms to requests)",
        _kafka_latency,
        full=Size(_load(300, 40), cap_s=240, fault_s=30.0),
        smoke=Size(_load(30, 6), cap_s=120, fault_s=6.0),
        network=True,
        kafka_proxy=True,
    ),
    Scenario(
        "kafka-reset",
        "Toxiproxy resets every connection between the relays and the broker, in short bursts",
        _kafka_reset,
        full=Size(_load(300, 40), cap_s=300, fault_s=3.0, repeat=4, gap_s=6.0),
        smoke=Size(_load(30, 6), cap_s=150, fault_s=2.0),
        network=True,
        kafka_proxy=True,
    ),
)

BY_NAME: dict[str, Scenario] = {s.name: s for s in SCENARIOS}
