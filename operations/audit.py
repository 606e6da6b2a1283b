"""The audit's arithmetic: fal's billing rows against the keys genrelay announced.

Pure: it takes what was read (billing events with their tags, genrelay's completion events)
and says, per key, how many requests fal billed. A key is billed twice whoever caused it (a
second replica, a retry, a client around genrelay); a billed request no key of genrelay's
explains is an orphan; a key genrelay announced as succeeded that fal never billed is
reported too (fal's billing lags: only keys announced in the `settled` span count).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from genrelay.consumer.provider.fal_platform import BillingEvent
from genrelay.consumer.steps import key_hash
from genrelay.schemas.completions import CompletionEvent
from genrelay.schemas.costs import CostRecord


@dataclass(frozen=True)
class Charge:
    request_id: str
    endpoint: str
    cost_usd: float | None
    billed_at: datetime
    units: float | None = None
    tenant: str | None = None


@dataclass
class AuditReport:
    billed_requests: int = 0
    spend_usd: float = 0.0
    keys_billed: int = 0
    double_charges: dict[str, list[Charge]] = field(default_factory=dict)
    orphans: list[Charge] = field(default_factory=list)
    unbilled: dict[str, str] = field(default_factory=dict)  # key -> request_id
    spend_by_tenant: dict[str, float] = field(default_factory=dict)
    spend_by_endpoint: dict[str, float] = field(default_factory=dict)
    # Every key genrelay announced that fal billed, with its charges (for `genrelay.costs`).
    billed: dict[str, list[Charge]] = field(default_factory=dict)
    estimates: dict[str, float | None] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.double_charges

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "billed_requests": self.billed_requests,
            "spend_usd": round(self.spend_usd, 9),
            "keys_billed": self.keys_billed,
            "double_charges": {
                key: [_charge(c) for c in charges] for key, charges in self.double_charges.items()
            },
            "orphans": [_charge(c) for c in self.orphans],
            "unbilled": self.unbilled,
            "spend_by_tenant": _rounded(self.spend_by_tenant),
            "spend_by_endpoint": _rounded(self.spend_by_endpoint),
        }

    def text(self) -> str:
        lines = [
            f"billed requests: {self.billed_requests}, for {self.keys_billed} keys,"
            f" {self.spend_usd:.4f} USD",
            f"double charges: {len(self.double_charges)}",
        ]
        for key, charges in sorted(self.double_charges.items()):
            ids = ", ".join(c.request_id for c in charges)
            lines.append(f"  {key}: billed {len(charges)} times ({ids})")
        lines.append(f"orphans (billed, no key of genrelay's): {len(self.orphans)}")
        lines += [f"  {c.request_id} {c.endpoint} {c.cost_usd}" for c in self.orphans[:20]]
        lines.append(f"announced as succeeded, never billed: {len(self.unbilled)}")
        lines += [f"  {key}: {rid}" for key, rid in sorted(self.unbilled.items())[:20]]
        lines.append("spend by tenant: " + _listing(self.spend_by_tenant))
        lines.append("spend by endpoint: " + _listing(self.spend_by_endpoint))
        return "\n".join(lines)


def audit(
    billed: Iterable[BillingEvent],
    announced: Iterable[CompletionEvent],
    *,
    settled: tuple[datetime, datetime],
) -> AuditReport:
    """`settled`: keys announced in this span are expected in the billing rows read."""
    # Every billing row is matched to a key: by its `gr.key` tag, else by its request id.
    by_hash: dict[str, str] = {}
    by_request: dict[str, str] = {}
    succeeded: dict[str, CompletionEvent] = {}
    for event in announced:
        key = event.idempotency_key
        by_hash[key_hash(key)] = key
        if event.request_id is not None:
            by_request[event.request_id] = key
        if event.status == "succeeded" and not event.replayed:
            succeeded.setdefault(key, event)
    report = AuditReport()
    charges: dict[str, dict[str, Charge]] = defaultdict(dict)
    for row in billed:
        tenant = row.tags.get("tenant", "")
        charge = Charge(
            row.request_id, row.endpoint_id, row.cost_usd, row.timestamp, row.units, tenant or None
        )
        report.billed_requests += 1
        cost = row.cost_usd or 0.0
        report.spend_usd += cost
        report.spend_by_tenant[tenant] = report.spend_by_tenant.get(tenant, 0.0) + cost
        endpoint = row.endpoint_id
        report.spend_by_endpoint[endpoint] = report.spend_by_endpoint.get(endpoint, 0.0) + cost
        known = by_hash.get(row.tags.get("gr.key", "")) or by_request.get(row.request_id)
        if known is not None:
            key = known
        else:
            # A key genrelay never announced is still one key: group by its tag if any.
            tag = row.tags.get("gr.key")
            if tag is None:
                report.orphans.append(charge)
                continue
            key = f"(unannounced gr.key={tag})"
        charges[key][row.request_id] = charge
    report.keys_billed = len(charges)
    known_keys = set(by_hash.values())
    for key, found in charges.items():
        if key in known_keys:
            report.billed[key] = sorted(found.values(), key=lambda c: c.billed_at)
    report.estimates = {key: event.cost_usd for key, event in succeeded.items()}
    report.double_charges = {
        key: sorted(found.values(), key=lambda c: c.billed_at)
        for key, found in charges.items()
        if len(found) > 1
    }
    billed_ids = {rid for found in charges.values() for rid in found}
    for key, event in succeeded.items():
        done = event.completed_at
        due = done is not None and settled[0] <= done < settled[1]
        if due and event.request_id is not None and event.request_id not in billed_ids:
            report.unbilled[key] = event.request_id
    return report


def _charge(charge: Charge) -> dict[str, Any]:
    return {
        "request_id": charge.request_id,
        "endpoint": charge.endpoint,
        "cost_usd": charge.cost_usd,
        "billed_at": charge.billed_at.isoformat(),
    }


def _rounded(spend: dict[str, float]) -> dict[str, float]:
    return {name: round(usd, 9) for name, usd in sorted(spend.items())}


def _listing(spend: dict[str, float]) -> str:
    if not spend:
        return "none"
    return ", ".join(f"{name or '(none)'} {usd:.4f}" for name, usd in sorted(spend.items()))


def cost_records(report: AuditReport, now: datetime) -> list[CostRecord]:
    """What fal billed each announced key, as `genrelay.costs` records."""
    records = []
    for key, charges in sorted(report.billed.items()):
        last = charges[-1]
        units = [c.units for c in charges if c.units is not None]
        records.append(
            CostRecord(
                idempotency_key=key,
                endpoint=last.endpoint,
                tenant=last.tenant,
                request_ids=[c.request_id for c in charges],
                billed_units=sum(units) if units else None,
                cost_usd=round(sum(c.cost_usd or 0.0 for c in charges), 9),
                estimated_usd=report.estimates.get(key),
                billed_at=last.billed_at,
                settled_at=now,
            )
        )
    return records
