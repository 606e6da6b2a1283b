"""The alert rules and the dashboard under deploy/monitoring name only metrics genrelay
exports, and are well formed (checked offline: no Prometheus or Grafana here)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from genrelay.consumer.service.metrics import GaugeSources, RelayMetrics

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"
METRIC = re.compile(r"\bgenrelay_[a-z0-9_]+")


def exported() -> set[str]:
    """Every sample name one relay exports, with every source wired and one of each
    observation made (histograms appear once observed)."""
    partition = {("genrelay.requests", 0): 1}
    metrics = RelayMetrics(
        GaugeSources(
            jobs_by_phase=lambda: {"SUBMITTED": 1},
            in_flight=lambda: 1,
            in_flight_by_endpoint=lambda: {"fal-ai/flux/schnell": 1},
            in_flight_by_tenant=lambda: {"ops": 1},
            waiting_by_tenant=lambda: {"ops": 1},
            share_by_tenant=lambda: {"ops": 1.0},
            budget_waiting_by_tenant=lambda: {"ops": 0},
            period_spend_by_tenant=lambda: {"ops": 0.5},
            budget_by_tenant=lambda: {"ops": 1.0},
            uncommitted_offsets=lambda: partition,
            oldest_in_flight_age=lambda: {("genrelay.requests", 0): 1.0},
        )
    )
    try:
        metrics.job_timings("fal-ai/flux/schnell", queued_seconds=1.0, run_seconds=1.0)
        metrics.spent(0.01, "fal-ai/flux/schnell", "ops")
        metrics.budget_refused("ops", waits=True)
        text = generate_latest(metrics.registry).decode()
    finally:
        metrics.shutdown()
    return {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }


def test_every_alert_rule_is_complete_and_names_exported_metrics() -> None:
    rules = yaml.safe_load((MONITORING / "alerts.yaml").read_text())
    names = exported()
    seen: set[str] = set()
    (group,) = rules["groups"]
    for rule in group["rules"]:
        assert rule["alert"].startswith("Genrelay"), rule
        assert rule["alert"] not in seen
        seen.add(rule["alert"])
        assert rule["labels"]["severity"] in {"page", "warn", "info"}
        assert rule["annotations"]["summary"]
        used = set(METRIC.findall(rule["expr"]))
        assert used, rule["alert"]
        assert used <= names, (rule["alert"], used - names)


def test_every_dashboard_query_names_exported_metrics() -> None:
    dashboard: dict[str, Any] = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    names = exported()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(METRIC.findall(target["expr"]))
            assert used, panel["title"]
            assert used <= names, (panel["title"], used - names)
