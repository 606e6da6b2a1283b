"""genrelay's own hops, per job, from timestamps that other processes wrote.

    record produced ─► submit received          request record's CreateTime (the bench's
                                                producer) to the emulator's `received_at`
    webhook received ─► completion acknowledged the relay's hand-over of the verified
                                                delivery (webhooks topic CreateTime) to the
                                                broker's append of the completion event
                                                (LogAppendTime), minus the file transfer
    file transfer                               the result learnt (the ledger's `result_at`)
                                                to the STORED decision (`finished_at`):
                                                download, checks, upload
    record produced ─► completion appended      end to end, provider time included: request
                                                record's CreateTime to the completion
                                                event's LogAppendTime

All clocks are the same machine's wall clock. Kafka timestamps have millisecond resolution.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from genrelay.bench.measure import summary_ms
from genrelay.bench.workload import read_topic
from genrelay.schemas.topics import Topics


@dataclass
class LedgerTimes:
    """When each phase of one key was decided (relay clock) and appended (broker clock)."""

    appended_ms: dict[str, int] = field(default_factory=dict)  # phase -> first LogAppendTime
    decided_ms: dict[str, float] = field(default_factory=dict)  # phase -> first updated_at


@dataclass
class TopicTimes:
    """The timestamps of one scenario's topics, by idempotency key."""

    produced_ms: dict[str, int] = field(default_factory=dict)
    hook_ms: dict[str, int] = field(default_factory=dict)
    completed_ms: dict[str, int] = field(default_factory=dict)
    ledger: dict[str, LedgerTimes] = field(default_factory=dict)
    received_ms: dict[str, float] = field(default_factory=dict)
    request_ids: dict[str, str] = field(default_factory=dict)

    @classmethod
    async def read(
        cls, bootstrap: str, topics: Topics, submissions: list[dict[str, Any]]
    ) -> TopicTimes:
        """Read the requests, webhooks, ledger and completions topics to their ends."""
        times = cls()
        for record in await read_topic(bootstrap, topics.requests):
            times.produced_ms.setdefault(record.key.decode(), record.timestamp)
        for record in await read_topic(bootstrap, topics.webhooks):
            key = json.loads(record.value)["idempotency_key"]
            times.hook_ms.setdefault(key, record.timestamp)
        for record in await read_topic(bootstrap, topics.completions):
            times.completed_ms.setdefault(record.key.decode(), record.timestamp)
        for record in await read_topic(bootstrap, topics.ledger):
            if record.value is None:
                continue
            state = json.loads(record.value)
            entry = times.ledger.setdefault(state["idempotency_key"], LedgerTimes())
            phase = state["phase"]
            entry.appended_ms.setdefault(phase, record.timestamp)
            if state.get("result_at"):
                # The result commits with the stored state, not on its own: when it was learnt
                # is kept in the state itself.
                learnt = datetime.fromisoformat(state["result_at"]).timestamp() * 1000
                entry.decided_ms.setdefault("RESULT_READY", learnt)
            updated = datetime.fromisoformat(state["updated_at"]).timestamp() * 1000
            entry.decided_ms.setdefault(phase, updated)
            if phase == "COMPLETED" and state.get("finished_at"):
                # Files stored and the outcome announced commit together: no STORED state is
                # written on its own, and the files were stored when the key finished.
                stored = datetime.fromisoformat(state["finished_at"]).timestamp() * 1000
                entry.decided_ms.setdefault("STORED", stored)
        for item in submissions:
            key = str(item["input"].get("prompt"))
            times.received_ms.setdefault(key, float(item["received_at"]) * 1000)
            times.request_ids.setdefault(key, str(item["request_id"]))
        return times

    def end_to_end(self, keys: Iterable[str]) -> dict[str, float | int | None]:
        """p50/p99 from each request record's CreateTime to its completion's LogAppendTime."""
        return summary_ms(
            self.completed_ms[key] - self.produced_ms[key]
            for key in keys
            if key in self.completed_ms and key in self.produced_ms
        )

    def hops(self, keys: Iterable[str]) -> dict[str, Any]:
        """p50/p99 of each hop over `keys` (a job missing a timestamp is left out of that hop)."""
        submit: list[float] = []
        webhook: list[float] = []
        to_ready: list[float] = []
        to_ack: list[float] = []
        transfer: list[float] = []
        for key in keys:
            if key in self.produced_ms and key in self.received_ms:
                submit.append(self.received_ms[key] - self.produced_ms[key])
            entry = self.ledger.get(key)
            if entry is None:
                continue
            ready = entry.decided_ms.get("RESULT_READY")
            stored = entry.decided_ms.get("STORED")
            done = self.completed_ms.get(key)
            if ready is None or stored is None:
                continue
            transfer.append(stored - ready)
            if done is None:
                continue
            to_ack.append(done - stored)
            hook = self.hook_ms.get(key)
            if hook is not None and hook <= ready:
                to_ready.append(ready - hook)
                webhook.append(ready - hook + done - stored)
        return {
            "record_to_submit_ms": summary_ms(submit),
            "webhook_to_ack_ms": summary_ms(webhook),
            "webhook_to_result_ready_ms": summary_ms(to_ready),
            "stored_to_ack_ms": summary_ms(to_ack),
            "transfer_ms": summary_ms(transfer),
        }


@dataclass(frozen=True)
class Histogram:
    """A Prometheus histogram: cumulative bucket counts by upper bound, sum and count."""

    buckets: tuple[tuple[float, float], ...]
    total: float
    count: float

    def minus(self, earlier: Histogram | None) -> Histogram:
        """What was observed since `earlier`."""
        if earlier is None:
            return self
        before = dict(earlier.buckets)
        return Histogram(
            tuple((le, n - before.get(le, 0.0)) for le, n in self.buckets),
            self.total - earlier.total,
            self.count - earlier.count,
        )

    def quantile(self, q: float) -> float | None:
        """Prometheus' `histogram_quantile`: linear within the bucket holding the rank."""
        if self.count <= 0:
            return None
        rank = q * self.count
        lower, below = 0.0, 0.0
        for le, cumulative in self.buckets:
            if cumulative >= rank:
                if le == float("inf"):
                    return lower
                share = (rank - below) / (cumulative - below) if cumulative > below else 1.0
                return lower + (le - lower) * share
            lower, below = le, cumulative
        return lower

    def summary_ms(self) -> dict[str, float | int | None]:
        def ms(value: float | None) -> float | None:
            return None if value is None else round(value * 1000, 2)

        return {
            "n": int(self.count),
            "mean": ms(self.total / self.count) if self.count else None,
            "p50": ms(self.quantile(0.5)),
            "p99": ms(self.quantile(0.99)),
        }


def parse_histograms(text: str, names: Iterable[str]) -> dict[str, Histogram]:
    """The named histograms of a Prometheus text exposition, summed over their labels."""
    found: dict[str, Histogram] = {}
    for name in names:
        buckets: dict[float, float] = {}
        total = count = 0.0
        seen = False
        for line in text.splitlines():
            if not line.startswith(name + "_"):
                continue
            metric, _, value = line.rpartition(" ")
            if metric.startswith(name + "_bucket"):
                le = metric.split('le="', 1)[1].split('"', 1)[0]
                bound = float("inf") if le == "+Inf" else float(le)
                buckets[bound] = buckets.get(bound, 0.0) + float(value)
                seen = True
            elif metric.startswith(name + "_sum"):
                total += float(value)
            elif metric.startswith(name + "_count"):
                count += float(value)
        if seen:
            found[name] = Histogram(tuple(sorted(buckets.items())), total, count)
    return found


def parse_counters(text: str, names: Iterable[str]) -> dict[str, float]:
    """The named counters of a Prometheus text exposition (`name_total`), summed over labels."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        metric, _, value = line.rpartition(" ")
        base = metric.split("{", 1)[0]
        for name in names:
            if base == name + "_total":
                found[name] = found.get(name, 0.0) + float(value)
    return found
