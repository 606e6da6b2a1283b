"""Runs one scenario end to end and measures the invariants.

    emulator (in this process) ◄──proxy "provider"── relays ──proxy "minio"──► MinIO
                 │ webhooks (direct)                    │ └──proxy "kafka"───► Kafka (PROXIED)
                 └──► webhook front ──► relays          ▼
    runner: producer, completion reader, ledger reader ──► Kafka (PLAIN, never proxied)

Order: emulator and proxies, relays (which create their run's topics), the completion
reader; then the load, the fault script and the crash supervisor run together until every
key has a terminal event and the script is done, or the wall-clock cap. Then faults are
healed, relays stopped gracefully, and everything they published is read to its end before
the provider's accounting is compared with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from genrelay.chaos.environment import Servers
from genrelay.chaos.faults import Injector, Progress
from genrelay.chaos.load import Job, produce
from genrelay.chaos.observe import Completions, LedgerTally, TopicTail
from genrelay.chaos.replicas import ReplicaSet
from genrelay.chaos.report import ScenarioReport
from genrelay.chaos.scenarios import Scenario, Size
from genrelay.chaos.toxiproxy import Proxy, Toxiproxy
from genrelay.chaos.webhook_front import webhook_front
from genrelay.consumer.service.config import Settings
from genrelay.deploy.local.processes import free_port
from genrelay.emulator.server import EmulatorServer
from genrelay.emulator.settings import EmulatorSettings

# Jobs take seconds at the provider, and webhooks keep trying long enough (about 30 s) to
# reach a replica that is restarting.
EMULATOR_DEFAULTS: Mapping[str, Any] = {
    "queue_latency": "fixed:100",
    "run_latency": "uniform:500:2500",
    "webhook_retries": 60,
    "webhook_backoff_max_ms": 500.0,
    "history_lag_s": 1.0,  # the request history lists a request a second after it arrived
}

# Short timers so a bounded run can see every path end: polls after 3 s without a webhook;
# an ambiguous submit is adopted from the request history (listed within 2 s), or re-posted
# once the history proves it never arrived (60 s start deadline, so a 20 s cold start never
# expires one); one neither settles fails within 30 s of that (never re-posted blindly: a
# failure is visible, a second payment would not be).
RELAY_DEFAULTS: Mapping[str, Any] = {
    "partitions": 6,
    "session_timeout_ms": 6000,
    "poll_grace_seconds": 3.0,
    "poll_max_interval_seconds": 3.0,
    "commit_interval_seconds": 0.5,
    "shutdown_grace_seconds": 5.0,
    "unknown_grace_seconds": 30.0,
    "resubmit_unknown": False,
    "start_timeout_seconds": 60.0,
    "history_lag_seconds": 2.0,
    "clock_skew_seconds": 1.0,
}

# How webhooks reach the relays in a run: all of them, none (fal loses every one), or none
# asked for (polling only).
WEBHOOK_MODES = ("on", "lost", "off")


class UnsupportedScenarioError(RuntimeError):
    """The scenario needs something these servers do not offer (Toxiproxy, owned servers)."""


@dataclass(frozen=True)
class Wiring:
    """Where the relays find the provider, MinIO and Kafka in one run."""

    fal_queue_url: str
    fal_platform_url: str  # fal's Platform API (request history): never behind the proxy
    jwks_url: str
    s3_endpoint: str
    kafka_bootstrap: str


def check_supported(scenario: Scenario, servers: Servers, api: Toxiproxy | None) -> None:
    """Raise `UnsupportedScenarioError` unless these servers can run the scenario."""
    if scenario.network and api is None:
        raise UnsupportedScenarioError(f"{scenario.name} needs Toxiproxy")
    if scenario.kafka_proxy and servers.kafka_proxy is None:
        raise UnsupportedScenarioError(f"{scenario.name} needs Kafka behind Toxiproxy (ChaosStack)")
    if scenario.stops_servers and not servers.owned:
        raise UnsupportedScenarioError(f"{scenario.name} stops servers: it needs its own stack")


def relay_settings(
    scenario: Scenario, run: str, wiring: Wiring, servers: Servers, webhook_base: str | None
) -> list[Settings]:
    """One settings object per replica: the run's own topics, group and bucket."""
    ports = [free_port() for _ in range(scenario.replicas)]
    secret = secrets.token_urlsafe(32)
    common: dict[str, Any] = {
        **RELAY_DEFAULTS,
        "kafka_bootstrap": wiring.kafka_bootstrap,
        "group_id": f"chaos-{run}",
        **{f"topic_{t}": f"chaos-{run}.{t}" for t in _TOPICS},
        "fal_queue_url": wiring.fal_queue_url,
        "fal_platform_url": wiring.fal_platform_url,
        "fal_key": "emulator-key",
        "fal_jwks_url": wiring.jwks_url,
        "webhook_secret": secret,
        "s3_endpoint": wiring.s3_endpoint,
        "s3_access_key": servers.s3_access_key,
        "s3_secret_key": servers.s3_secret_key,
        "bucket": f"chaos-{run}",
        "download_hosts": ["127.0.0.1"],
        "allow_private_downloads": True,
        **scenario.relay,
    }
    return [
        Settings(
            **common,
            http_port=port,
            admin_port=free_port(),
            instance_id=f"relay-{n}",
            public_webhook_url=webhook_base or f"http://127.0.0.1:{port}",
        )
        for n, port in enumerate(ports)
    ]


_TOPICS = (
    "requests",
    "ledger",
    "webhooks",
    "completions",
    "progress",
    "dead_letter",
    "costs",
    "budgets",
    "spend",
)


async def run_scenario(
    scenario: Scenario,
    size: Size,
    servers: Servers,
    *,
    api: Toxiproxy | None,
    workdir: Path,
    size_name: str,
    command: str,
    seed: int = 0,
    webhooks: str = "on",
) -> ScenarioReport:
    """Run one scenario against `servers` and report what it showed."""
    check_supported(scenario, servers, api)
    run = uuid.uuid4().hex[:8]
    provider_port = free_port()
    lost = {"webhook_loss_rate": 1.0} if webhooks == "lost" else {}
    settings = EmulatorSettings(
        **{**EMULATOR_DEFAULTS, **scenario.emulator, **lost},
        seed=seed,
        public_base_url=f"http://127.0.0.1:{provider_port}" if api else None,
    )
    async with contextlib.AsyncExitStack() as stack:
        emulator = await stack.enter_async_context(EmulatorServer(settings))
        proxies: dict[str, Proxy] = {}
        if api is not None:
            proxies = await _proxies(stack, api, run, provider_port, emulator, servers)
        wiring = Wiring(
            fal_queue_url=emulator.base_url,
            fal_platform_url=f"{emulator.listen_url}/v1",
            jwks_url=f"{emulator.listen_url}/.well-known/jwks.json",
            s3_endpoint=proxies["minio"].listen if "minio" in proxies else servers.minio.endpoint,
            kafka_bootstrap=servers.relay_bootstrap,
        )
        replica_settings = relay_settings(scenario, run, wiring, servers, None)
        if webhooks == "off":
            replica_settings = [
                s.model_copy(update={"public_webhook_url": None}) for s in replica_settings
            ]
        elif scenario.replicas > 1:
            backends = [f"http://127.0.0.1:{s.http_port}" for s in replica_settings]
            front = await stack.enter_async_context(webhook_front(backends))
            replica_settings = [
                s.model_copy(update={"public_webhook_url": front}) for s in replica_settings
            ]
        replicas = await stack.enter_async_context(ReplicaSet(replica_settings, workdir / run))
        first = replica_settings[0]
        completions = Completions(started=time.monotonic())
        tail = await stack.enter_async_context(
            TopicTail(servers.direct_bootstrap, first.topic_completions, completions.record)
        )
        run_state = _Run(
            servers=servers,
            emulator=emulator,
            replicas=replicas,
            tail=tail,
            completions=completions,
            jobs=size.load.plan(f"{scenario.name}-{run}"),
            settings=first,
            api=api,
            proxies=proxies,
        )
        report = await _drive(scenario, size, run_state, size_name=size_name, command=command)
    return report


async def _proxies(
    stack: contextlib.AsyncExitStack,
    api: Toxiproxy,
    run: str,
    provider_port: int,
    emulator: EmulatorServer,
    servers: Servers,
) -> dict[str, Proxy]:
    upstream = emulator.listen_url.removeprefix("http://")
    provider = await api.create(
        f"{run}-provider", listen=f"127.0.0.1:{provider_port}", upstream=upstream
    )
    stack.push_async_callback(api.delete, provider)
    minio = await api.create(
        f"{run}-minio", listen=f"127.0.0.1:{free_port()}", upstream=servers.minio.endpoint
    )
    stack.push_async_callback(api.delete, minio)
    proxies = {"provider": provider, "minio": minio}
    if servers.kafka_proxy is not None:
        proxies["kafka"] = servers.kafka_proxy
    return proxies


@dataclass
class _Run:
    servers: Servers
    emulator: EmulatorServer
    replicas: ReplicaSet
    tail: TopicTail
    completions: Completions
    jobs: list[Job]
    settings: Settings
    api: Toxiproxy | None
    proxies: Mapping[str, Proxy]


async def _drive(
    scenario: Scenario, size: Size, r: _Run, *, size_name: str, command: str
) -> ScenarioReport:
    keys = [job.key for job in r.jobs]
    progress = Progress(total=len(keys))
    started = time.monotonic()
    # The provider stamps submissions with wall-clock time; this is the run clock's zero on it.
    wall_start = time.time()
    r.completions.started = started
    injector = Injector(
        emulator=r.emulator,
        servers=r.servers,
        replicas=r.replicas,
        progress=progress,
        started=started,
        api=r.api,
        proxies=r.proxies,
    )

    def sent(count: int) -> None:
        progress.produced = count

    loop = asyncio.get_running_loop()
    producer = loop.create_task(
        produce(
            r.servers.direct_bootstrap,
            r.settings.topic_requests,
            r.jobs,
            started=started,
            on_sent=sent,
        )
    )
    follower = loop.create_task(r.tail.follow())
    supervisor = loop.create_task(r.replicas.supervise())
    script = loop.create_task(scenario.inject(injector, size))
    deadline = started + size.cap_s
    try:
        while time.monotonic() < deadline:
            progress.finished = r.completions.finished(keys)
            if follower.done():
                follower.result()  # the observer broke: nothing it says can be trusted
                raise RuntimeError("the completion reader stopped")
            if script.done() and producer.done() and progress.finished == len(keys):
                break
            await asyncio.sleep(0.2)
        wall = time.monotonic() - started
    finally:
        unfinished = not script.done()
        error = await _settle(script, "fault script")
        error = await _settle(producer, "producer") or error
        await _settle(supervisor, "supervisor")
        await r.replicas.stop()
        await _settle(follower, "completion reader")
    if unfinished:
        error = error or f"the {size.cap_s:.0f} s cap ended the run before its faults were done"
    await r.tail.read_to_end()
    tally = LedgerTally()
    async with TopicTail(r.servers.direct_bootstrap, r.settings.topic_ledger, tally.record) as led:
        await led.read_to_end()
    return _report(
        scenario,
        r,
        injector,
        tally,
        keys,
        wall=wall,
        size_name=size_name,
        command=command,
        error=error,
        wall_start=wall_start,
    )


async def _settle(task: asyncio.Task[None], what: str) -> str | None:
    """Cancel the task if it still runs (its faults heal on the way out); its error, if any."""
    if not task.done():
        task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        return None
    except Exception as exc:
        return f"{what}: {exc!r}"
    return None


def _report(
    scenario: Scenario,
    r: _Run,
    injector: Injector,
    tally: LedgerTally,
    keys: list[str],
    *,
    wall: float,
    size_name: str,
    command: str,
    error: str | None,
    wall_start: float,
) -> ScenarioReport:
    completions = r.completions
    failed: Counter[str] = Counter()
    completed = 0
    several: list[str] = []
    most = 0
    for key in keys:
        events = completions.events.get(key)
        if not events:
            continue
        distinct = {e.get("event_id") for e in events}
        most = max(most, len(distinct))
        if len(distinct) > 1:
            several.append(key)
        first = events[0]
        if first.get("status") == "succeeded":
            completed += 1
        else:
            kind = (first.get("error") or {}).get("type", "unknown")
            status = first.get("status")
            failed[kind if status == "failed" else f"{status}: {kind}"] += 1
    lost = [k for k in keys if k not in completions.events]
    paid_at: dict[str, list[float]] = {}
    for submission in r.emulator.submissions():
        key = str((submission.input or {}).get("prompt"))
        paid_at.setdefault(key, []).append(submission.received_at - wall_start)
    extra = {k: len(paid_at[k]) - 1 for k in keys if len(paid_at.get(k, ())) > 1}
    heals = [f.healed for f in injector.faults if f.healed is not None]
    drain = None
    if heals and not lost and completions.first_at:
        last_event = max(completions.first_at.get(k, 0.0) for k in keys)
        drain = max(0.0, last_event - max(heals))
    stats = r.emulator.stats()
    notes = {
        **injector.notes,
        "provider submissions": int(stats["submissions"]),
        "ambiguous submits adopted (webhook or request history)": len(
            tally.adopted.intersection(keys)
        ),
        "re-posted, the history having proved them absent": sum(tally.proven_absent.values()),
        "deliberate resubmissions": sum(tally.resubmissions.values()),
        "replica kills": r.replicas.kills,
        "replica pauses": r.replicas.pauses,
        "ledger regressions": len(tally.regressed.keys() & set(keys)),
        "replica crashes": len(r.replicas.crashes),
    }
    if stats["rejected_submits"]:
        notes["429 answers"] = int(stats["rejected_submits"])
    return ScenarioReport(
        scenario=scenario.name,
        size=size_name,
        jobs=len(keys),
        faults=tuple(injector.faults),
        completed=completed,
        failed=dict(failed),
        lost=len(lost),
        extra_paid=sum(extra.values()),
        events_per_key_max=most,
        keys_with_several_events=len(several),
        drain_s=drain,
        wall_s=wall,
        command=command,
        notes=notes,
        crashes=tuple(r.replicas.crashes),
        evidence={
            "lost (last ledger phase)": [f"{k} ({tally.phases.get(k, 'none')})" for k in lost[:5]],
            "several events": several[:5],
            "ledger went back": [
                f"{k}: {tally.regressed[k]}" for k in keys if k in tally.regressed
            ][:5],
            "paid more than once (run clock)": [
                f"{k} at t=" + ", ".join(f"{t:.1f}" for t in paid_at[k]) for k in list(extra)[:5]
            ],
            "failed": [
                f"{k}: {(completions.events[k][0].get('error') or {}).get('message', '')[:160]}"
                for k in keys
                if k in completions.events and completions.events[k][0].get("status") != "succeeded"
            ][:3],
        },
        error=error,
    )
