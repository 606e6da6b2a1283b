"""The bench's outputs: a table for people, a JSON file of every figure, and the checks that
decide the exit code (every figure present, exactly one paid submission per key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from genrelay.bench.context import Plan

Results = dict[str, Any]


def find_spends(node: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every `spend` figure in the results, with where it sits."""
    if isinstance(node, dict):
        for key, value in node.items():
            where = f"{path}.{key}" if path else key
            if key == "spend" and isinstance(value, dict) and "submissions" in value:
                yield path, value
            else:
                yield from find_spends(value, where)


def spend_summary(scenarios: dict[str, Any]) -> dict[str, Any]:
    """Scenario 5: paid submissions per unique key over every run that paid the emulator."""
    parts = dict(find_spends(scenarios))
    submissions = sum(s["submissions"] for s in parts.values())
    keys = sum(s["unique_keys"] for s in parts.values())
    return {
        "submissions": submissions,
        "unique_keys": keys,
        "per_key": round(submissions / keys, 6) if keys else None,
        "ok": bool(parts) and all(s["ok"] for s in parts.values()),
        "by_run": {where: s["per_key"] for where, s in parts.items()},
    }


# Units that never pay the provider (a simulated clock; a ledger read back): a run of only
# these has no spend to check.
_UNPAID_UNITS = frozenset({"fairness", "scale.restore"})


def pays(units: list[str]) -> bool:
    """Whether any of the units submits to the provider (so spend must be 1.000)."""
    return any(unit not in _UNPAID_UNITS for unit in units)


def required_figures(plan: Plan, units: list[str]) -> list[str]:
    """The dotted paths the run must have produced, given what it ran."""
    wanted: list[str] = []
    hops = ("record_to_submit_ms", "webhook_to_ack_ms", "transfer_ms")
    if "throughput" in units:
        wanted += [
            "throughput.jobs_per_second",
            "throughput.relay_cpu_ms_per_job",
            "throughput.relay_peak_rss_mb",
            "throughput.provider_calls.per_job",
            "throughput.paced_relay_cpu_ms_per_job",
        ]
        wanted += [f"throughput.hops.{hop}.{q}" for hop in hops for q in ("p50", "p99")]
    if "baselines" in units:
        for kind in ("naive", "floor", "floor-job", "floor-job-aiohttp"):
            wanted += [
                f"baselines.{kind}.jobs_per_second",
                f"baselines.{kind}.provider_calls.per_job",
                f"baselines.genrelay_ratio.{kind}",
            ]
        wanted.append("baselines.genrelay_cpu_multiple.floor-job")
    if "scale.in-flight" in units:
        wanted.append("scale.in_flight.rss_kb_per_in_flight_job")
    if "scale.restore" in units:
        wanted += [
            "scale.restore.restore_seconds",
            "scale.restore.records_per_second",
            "scale.restore.warm_restore_seconds",
            "scale.restore.rss_bytes_per_finished_key",
        ]
    if "scale.replicas" in units:
        wanted += [f"scale.replicas.steps.{n}.jobs_per_second" for n in plan.replicas]
    if "webhookless" in units:
        wanted += ["webhookless.jobs_per_second", "webhookless.provider_calls.per_job"]
    if "fairness" in units:
        wanted += [f"fairness.{way}.{q}" for way in ("fair", "fifo") for q in ("p50_ms", "p99_ms")]
    if "backlog" in units:
        wanted += ["backlog.jobs_per_second", "backlog.relay_cpu_ms_per_job"]
        if "throughput" in units:
            wanted.append("backlog.without_backlog.jobs_per_second")
    if "realistic" in units:
        for client, cpu in (("genrelay", "relay_cpu_ms_per_job"), ("naive", "cpu_ms_per_job")):
            wanted += [
                f"realistic.{client}.{figure}"
                for figure in (
                    "jobs_per_second",
                    cpu,
                    "provider_calls.per_job",
                    "end_to_end_ms.p50",
                    "end_to_end_ms.p99",
                    "failed_as_injected",
                )
            ]
        wanted += [
            "realistic.naive_over_genrelay.provider_calls_per_job",
            "realistic.naive_over_genrelay.cpu_ms_per_job",
        ]
    return [*wanted, "spend.per_key"] if pays(units) else wanted


def lookup(scenarios: dict[str, Any], path: str) -> Any:
    node: Any = scenarios
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def missing_figures(results: Results) -> list[str]:
    """Required figures that are absent or empty."""
    return [p for p in results["required"] if lookup(results["scenarios"], p) is None]


def write_json(results: Results, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")


# --- the table ----------------------------------------------------------------------------


def _n(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) or (isinstance(value, float) and digits == 0):
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _hop(summary: dict[str, Any] | None) -> str:
    if not summary or summary.get("p50") is None:
        return "-"
    return f"p50 {_n(summary['p50'])} ms · p99 {_n(summary['p99'])} ms  (n={summary['n']:,})"


def _rows_throughput(t: dict[str, Any]) -> list[tuple[str, str]]:
    hops = t.get("hops", {})
    offered = t.get("paced_offered_jobs_per_second")
    calls = t.get("provider_calls", {})
    rows = [
        (f"jobs/s end to end (burst of {_n(t.get('jobs'))})", _n(t.get("jobs_per_second"))),
        (
            f"record produced → submit received (at {_n(offered)} jobs/s)",
            _hop(hops.get("record_to_submit_ms")),
        ),
        (
            "webhook received → completion acked, excl. transfer",
            _hop(hops.get("webhook_to_ack_ms")),
        ),
        ("  of which webhook → result learnt", _hop(hops.get("webhook_to_result_ready_ms"))),
        ("  of which files stored → completion acked", _hop(hops.get("stored_to_ack_ms"))),
        ("download + check + upload (separate)", _hop(hops.get("transfer_ms"))),
        ("relay CPU per job (burst)", f"{_n(t.get('relay_cpu_ms_per_job'), 2)} ms"),
        ("relay peak RSS", f"{_n(t.get('relay_peak_rss_mb'))} MB"),
        ("provider HTTP calls per job", _n(calls.get("per_job"), 2)),
    ]
    if committed := t.get("transactions"):
        rows.append(
            (
                "Kafka transactions per job (burst)",
                f"{_n(committed.get('per_job'), 2)} · {_n(committed.get('records_per_job'), 2)}"
                f" records/job · {_n(committed.get('records_per_transaction'), 2)} records each",
            )
        )
    if (paced_cpu := t.get("paced_relay_cpu_ms_per_job")) is not None:
        paced = t.get("paced_transactions") or {}
        rows.append(
            (
                f"relay CPU per job (paced at {_n(offered)} jobs/s)",
                f"{_n(paced_cpu, 2)} ms · {_n(paced.get('per_job'), 2)} transactions/job · "
                f"{_n(paced.get('records_per_transaction'), 2)} records each",
            )
        )
    if failed := t.get("not_succeeded"):
        rows.append(("jobs that did not succeed (burst)", json.dumps(failed)))
    cpu = t.get("cpu", {})
    if cpu:
        shares = ", ".join(f"{k} {v:.0%}" for k, v in cpu["share_of_machine"].items())
        rows.append(("machine share during burst", f"{shares}, others {cpu['others_share']:.0%}"))
    if profile := t.get("profile"):
        rows += _rows_profile(profile)
    return rows


def _rows_profile(profile: dict[str, Any], top: int = 8) -> list[tuple[str, str]]:
    held = profile.get("gil_held_share")
    rows = [
        (
            "relay profile (py-spy, samples holding the GIL)",
            f"{profile['samples']:,} samples, GIL held {_n(held, 2)} of the burst",
        )
    ]
    libraries = ", ".join(f"{e['what']} {e['share']:.0%}" for e in profile["by_library"][:top])
    rows.append(("  by library", libraries))
    for entry in profile["own_time"][:top]:
        rows.append((f"  {entry['share']:.1%} own time", entry["what"]))
    return rows


def _rows_baselines(b: dict[str, Any]) -> list[tuple[str, str]]:
    labels = {
        "naive": "naive: fal-client subscribe, minio, commit per job",
        "floor": "floor: consume + one POST (aiohttp engine)",
        "floor-httpx": "floor: consume + one POST (httpx pool)",
        "floor-job": "floor: a whole job's traffic, no ledger (httpx on aiohttp's engine)",
        "floor-job-aiohttp": "floor: the same on aiohttp's own client",
    }
    ratio = b.get("genrelay_ratio", {})
    multiple = b.get("genrelay_cpu_multiple", {})
    rows = []
    for kind, label in labels.items():
        figures = b.get(kind)
        if not figures:
            continue
        if "error" in figures:
            rows.append((label, f"failed: {figures['error']}"))
            continue
        rows.append(
            (
                label,
                f"{_n(figures['jobs_per_second'])} jobs/s · "
                f"{_n(figures['provider_calls']['per_job'], 2)} calls/job · "
                f"{_n(figures['cpu_ms_per_job'], 2)} ms CPU/job · "
                f"genrelay = {_n(ratio.get(kind), 2)}x the jobs/s, "
                f"{_n(multiple.get(kind), 2)}x the CPU/job",
            )
        )
    return rows


def _rows_scale(s: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if (f := s.get("in_flight")) and "error" not in f:
        rows.append(
            (
                f"RSS per in-flight job ({_n(f['jobs_in_flight'])} in flight)",
                f"{_n(f['rss_kb_per_in_flight_job'], 1)} KB "
                f"(relay {_n(f['relay_idle_rss_mb'])} → {_n(f['relay_rss_mb'])} MB)",
            )
        )
    if (r := s.get("restore")) and "error" not in r:
        rows.append(
            (
                f"ledger restore, {_n(r['keys'])} keys in one partition",
                f"cold rebuild {_n(r['restore_seconds'])} s · "
                f"{_n(r['records_per_second'], 0)} records/s · {_n(r['memory_mb'], 0)} MB held "
                f"({_n(r['rss_bytes_per_finished_key'], 0)} B/finished key)",
            )
        )
        rows.append(
            (
                "  warm restore from the local store's checkpoint",
                f"{_n(r['warm_restore_seconds'])} s · {_n(r['warm_records_read'])} records read",
            )
        )
    if (p := s.get("replicas")) and "error" not in p:
        steps = p["steps"]
        counts = " → ".join(steps)
        rates = " → ".join(_n(step["jobs_per_second"]) for step in steps.values())
        speedups = ", ".join(f"x{step['speedup']}" for step in steps.values())
        rows.append((f"relay processes {counts}", f"{rates} jobs/s ({speedups})"))
        rows.append(("  verdict", p["verdict"]))
        callbacks = [step.get("rebalance_callback_ms") or {} for step in steps.values()]
        if any(callbacks):
            shown = " → ".join(
                f"{_n(c.get('n'))} calls, mean {_n(c.get('mean'))}, p99 ≤ {_n(c.get('p99'))}"
                for c in callbacks
            )
            rows.append(("  rebalance callback (ms)", shown))
    for part, figures in s.items():
        if isinstance(figures, dict) and "error" in figures:
            rows.append((part, f"failed: {figures['error']}"))
    return rows


def _rows_webhookless(w: dict[str, Any]) -> list[tuple[str, str]]:
    calls = w.get("provider_calls", {})
    grace = w.get("settings", {}).get("poll_grace_seconds")
    return [
        (f"jobs/s end to end (polling after {_n(grace)} s)", _n(w.get("jobs_per_second"))),
        ("provider HTTP calls per job", _n(calls.get("per_job"), 2)),
        ("relay CPU per job (burst)", f"{_n(w.get('relay_cpu_ms_per_job'), 2)} ms"),
    ]


def _rows_fairness(f: dict[str, Any]) -> list[tuple[str, str]]:
    def waits(way: str) -> str:
        w = f[way]
        return f"p50 {_n(w['p50_ms'])} ms · p99 {_n(w['p99_ms'])} ms · max {_n(w['max_ms'])} ms"

    setting = (
        f"a tenant's {_n(f['late'])} requests behind another's {_n(f['flood'])},"
        f" {_n(f['slots'])} slots, {_n(f['run_ms'])} ms runs"
    )
    return [
        (setting, f"its equal share would start the last after {_n(f['fair_share_wait_ms'])} ms"),
        ("  its wait, shared by tenant", waits("fair")),
        ("  its wait, in arrival order", waits("fifo")),
    ]


def _rows_backlog(b: dict[str, Any]) -> list[tuple[str, str]]:
    limit = b.get("settings", {}).get("max_in_flight_per_endpoint")
    other = b.get("without_backlog") or {}
    rows = [
        (
            f"{_n(b.get('jobs'))} keys at once, {_n(limit)} in flight: jobs/s · without backlog",
            f"{_n(b.get('jobs_per_second'))} · {_n(other.get('jobs_per_second'))}",
        ),
        (
            "relay CPU per job · without backlog",
            f"{_n(b.get('relay_cpu_ms_per_job'), 2)} ms · "
            f"{_n(other.get('relay_cpu_ms_per_job'), 2)} ms",
        ),
    ]
    if failed := b.get("not_succeeded"):
        rows.append(("jobs that did not succeed", json.dumps(failed)))
    return rows


def _rows_realistic(r: dict[str, Any]) -> list[tuple[str, str]]:
    settings = r.get("settings", {})
    provider = settings.get("provider", {})
    rows = [
        (
            f"{_n(settings.get('jobs'))} jobs, up to {_n(settings.get('concurrency'))} in flight",
            f"runs lognormal, median {_n(provider.get('run_median_ms'), 0)} ms, sigma "
            f"{_n(provider.get('run_sigma'), 2)} · {_n(provider.get('webhook_loss'), 2)} of "
            f"webhooks lost · {_n(provider.get('failure_rate'), 2)} failing",
        ),
        (
            "  genrelay's first poll without a webhook",
            f"after {_n(settings.get('genrelay_poll_grace_seconds'))} s "
            "(naive: fal-client polls every request)",
        ),
    ]
    ours, naive = r.get("genrelay", {}), r.get("naive", {})
    for name, figures in (("genrelay", ours), ("naive", naive)):
        if "error" in figures:
            rows.append((f"{name} failed", str(figures["error"])))
    if "error" in ours or "error" in naive:
        return rows
    ratio = r.get("naive_over_genrelay", {})

    def e2e(figures: dict[str, Any]) -> str:
        latency = figures.get("end_to_end_ms") or {}
        return f"{_n(latency.get('p50'), 0)} / {_n(latency.get('p99'), 0)} ms"

    rows += [
        ("", "genrelay · naive · naive/genrelay"),
        (
            "provider HTTP calls per job",
            f"{_n(ours['provider_calls']['per_job'], 2)} · "
            f"{_n(naive['provider_calls']['per_job'], 2)} · "
            f"{_n(ratio.get('provider_calls_per_job'), 2)}x",
        ),
        (
            "CPU per job (relay process / naive process)",
            f"{_n(ours.get('relay_cpu_ms_per_job'), 2)} ms · "
            f"{_n(naive.get('cpu_ms_per_job'), 2)} ms · {_n(ratio.get('cpu_ms_per_job'), 2)}x",
        ),
        (
            "jobs/s end to end",
            f"{_n(ours.get('jobs_per_second'))} · {_n(naive.get('jobs_per_second'))}",
        ),
        ("record produced → done, p50 / p99", f"{e2e(ours)} · {e2e(naive)}"),
        (
            "failed as injected (expected, not errors)",
            f"{_n(ours.get('failed_as_injected'))} · {_n(naive.get('failed_as_injected'))}",
        ),
    ]
    if failed := ours.get("not_succeeded"):
        rows.append(("genrelay jobs that failed otherwise", json.dumps(failed)))
    if naive.get("failed_otherwise"):
        rows.append(("naive jobs that failed otherwise", json.dumps(naive["errors_by_type"])))
    return rows


def render_table(results: Results) -> str:
    """The human-readable summary of a run."""
    meta = results["meta"]
    plan = meta["plan"]
    scenarios = results["scenarios"]
    lines = [
        f"genrelay bench · {meta['host']['cpus']} CPUs · load average "
        f"{meta['host']['load_average'][0]:.2f} at start, {meta['load_average_end'][0]:.2f} "
        f"at end · {'smoke' if plan['smoke'] else 'full'}: {plan['jobs']:,} jobs, "
        f"concurrency {plan['concurrency']}",
    ]
    sections = [
        (
            "1 Throughput and overhead (webhooks on, zero inference time, one small PNG)",
            "throughput",
            _rows_throughput,
        ),
        (
            "2 Baselines (same stack, emulator settings and concurrency)",
            "baselines",
            _rows_baselines,
        ),
        ("3 Scale", "scale", _rows_scale),
        ("4 Webhook-less mode", "webhookless", _rows_webhookless),
        ("6 Fair shares (the slot scheduler under a simulated clock)", "fairness", _rows_fairness),
        ("7 Backlog behind a full endpoint limit (zero inference time)", "backlog", _rows_backlog),
        (
            "8 Realistic provider (the same for genrelay and naive, equal concurrency)",
            "realistic",
            _rows_realistic,
        ),
    ]
    rows: list[tuple[str, str]] = []
    for title, name, build in sections:
        if name not in scenarios:
            continue
        rows.append((title, ""))
        figures = scenarios[name]
        if "error" in figures:
            rows.append(("  failed", str(figures["error"])))
            continue
        rows += [("  " + label, value) for label, value in build(figures)]
    spend = scenarios.get("spend", {})
    per_key = spend.get("per_key")
    rows.append(
        (
            "5 Spend: paid submissions per unique key, every run",
            f"{per_key:.3f}  ({spend['submissions']:,} submissions, {spend['unique_keys']:,} keys)"
            if per_key is not None
            else "-",
        )
    )
    width = max(len(label) for label, _ in rows) + 2
    lines += [f"{label:<{width}}{value}".rstrip() for label, value in rows]
    if missing := results.get("missing"):
        lines.append("missing figures: " + ", ".join(missing))
    return "\n".join(lines)
