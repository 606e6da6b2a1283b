"""Runs the selected scenarios in a fixed order on one stack and gathers every figure.

A scenario that fails is reported with its error and the others still run; the exit code
(see `cli`) then says the run is incomplete. Whatever happens, the buckets the run wrote to are
removed at its end.
"""

from __future__ import annotations

import functools
import platform
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from genrelay.bench import realistic
from genrelay.bench.backlog import backlog_run, without_backlog
from genrelay.bench.baselines import BaselineRun, compare, cpu_multiple, run_baseline
from genrelay.bench.context import Bench, Plan
from genrelay.bench.fairness import fairness
from genrelay.bench.measure import host_facts, load_average
from genrelay.bench.report import (
    Results,
    missing_figures,
    pays,
    required_figures,
    spend_summary,
)
from genrelay.bench.restore import restore
from genrelay.bench.scale import in_flight, replicas
from genrelay.bench.services import remove_buckets
from genrelay.bench.throughput import RelayRun, run_genrelay
from genrelay.deploy.local.stack import StackInfo

BASELINE_KINDS = ("naive", "floor", "floor-httpx", "floor-job", "floor-job-aiohttp")
# Run order; `scale` stands for its three parts. The backlog follows the throughput run it
# is set beside. The restore goes last: it leaves this process with gigabytes of
# freed-but-held memory.
UNITS = (
    "throughput",
    "webhookless",
    "backlog",
    "baselines",
    "realistic",
    "fairness",
    "scale.in-flight",
    "scale.replicas",
    "scale.restore",
)
SCENARIOS = ("throughput", "webhookless", "backlog", "baselines", "realistic", "fairness", "scale")
CHOICES = (*SCENARIOS, *UNITS[6:])

Progress = Callable[[str], None]


def expand(selected: Sequence[str]) -> list[str]:
    """The units to run, in run order; the baselines' ratios need the throughput run."""
    wanted = set(selected) or set(SCENARIOS)
    if "scale" in wanted:
        wanted |= {"scale.in-flight", "scale.replicas", "scale.restore"}
    if "baselines" in wanted:
        wanted.add("throughput")
    return [unit for unit in UNITS if unit in wanted]


def _stderr(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


async def run_bench(
    stack: StackInfo,
    plan: Plan,
    selected: Sequence[str] = (),
    *,
    workdir: Path,
    profile_dir: Path | None = None,
    progress: Progress = _stderr,
    checkpoint: Callable[[Results], None] | None = None,
) -> Results:
    """Run the scenarios on `stack` and return every figure (the JSON file's content).

    `checkpoint` gets the results so far after each scenario, so a long run that is
    interrupted still leaves the figures it measured.
    """
    bench = Bench(stack, plan, workdir, profile_dir)
    units = expand(selected)
    results: Results = {
        "meta": {
            "run_id": bench.run_id,
            "started_at": datetime.now(UTC).isoformat(),
            "command": sys.argv,
            "host": {**host_facts(), "python": platform.python_version()},
            "plan": {**plan.__dict__, "replicas": list(plan.replicas)},
            "stack": {"kafka_bootstrap": stack.kafka_bootstrap, "s3_endpoint": stack.s3_endpoint},
            "workdir": str(workdir),
            "scenarios": units,
        },
        "scenarios": {},
        "required": required_figures(plan, units),
    }
    scenarios: dict[str, Any] = results["scenarios"]
    began = time.monotonic()
    try:
        for unit in units:
            progress(f"{unit} ({time.monotonic() - began:.0f} s in, load {load_average()[0]:.2f})")
            await _run_unit(bench, unit, scenarios)
            if checkpoint is not None:
                checkpoint(results)
    finally:
        results["meta"]["buckets_removed"] = await _remove_buckets(bench, progress)
    scenarios["spend"] = spend_summary(scenarios)
    results["meta"]["load_average_end"] = load_average()
    results["meta"]["seconds"] = round(time.monotonic() - began, 1)
    results["missing"] = missing_figures(results)
    spent_right = scenarios["spend"]["ok"] or not pays(units)
    results["ok"] = not results["missing"] and spent_right and not _errors(scenarios)
    return results


async def _remove_buckets(bench: Bench, progress: Progress) -> list[str] | str:
    """Remove every bucket the run wrote to (the relays' and the naive baseline's); what went
    wrong if that failed, so a failed clean-up costs no figures."""
    try:
        return await remove_buckets(bench.stack, f"bench-{bench.run_id}")
    except Exception as exc:
        progress(f"buckets of run {bench.run_id} not removed: {type(exc).__name__}: {exc}")
        return f"failed: {type(exc).__name__}: {exc}"


async def _run_unit(bench: Bench, unit: str, scenarios: dict[str, Any]) -> None:
    plan = bench.plan
    figures: dict[str, Any]
    if unit == "baselines":
        figures = {}
        for kind in BASELINE_KINDS:
            figures[kind] = await _guarded(
                functools.partial(run_baseline, bench, BaselineRun(kind))
            )
        ours = scenarios.get("throughput", {})
        ratio, multiple = compare(ours, figures), cpu_multiple(ours, figures)
        figures["genrelay_ratio"], figures["genrelay_cpu_multiple"] = ratio, multiple
        scenarios["baselines"] = figures
        return
    if unit == "realistic":
        ours = await _guarded(
            functools.partial(
                run_genrelay,
                bench,
                realistic.relay_run(plan, profile=bench.profile_dir is not None),
            )
        )
        naive = await _guarded(functools.partial(run_baseline, bench, realistic.naive_run(plan)))
        scenarios["realistic"] = {
            "settings": realistic.settings(plan),
            "genrelay": ours,
            "naive": naive,
            "naive_over_genrelay": realistic.naive_over_genrelay(ours, naive),
        }
        return
    runners: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {
        "throughput": lambda: run_genrelay(
            bench, RelayRun("throughput", profile=bench.profile_dir is not None)
        ),
        "webhookless": lambda: run_genrelay(
            bench, RelayRun("webhookless", webhooks=False, paced=False)
        ),
        "backlog": lambda: run_genrelay(bench, backlog_run(plan)),
        "fairness": lambda: fairness(bench),
        "scale.in-flight": lambda: in_flight(bench),
        "scale.replicas": lambda: replicas(bench),
        "scale.restore": lambda: restore(bench),
    }
    figures = await _guarded(runners[unit])
    if unit == "backlog" and "error" not in figures:
        figures["without_backlog"] = without_backlog(scenarios.get("throughput", {}))
    if unit.startswith("scale."):
        scenarios.setdefault("scale", {})[unit.removeprefix("scale.").replace("-", "_")] = figures
    else:
        scenarios[unit] = figures


async def _guarded(run: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    try:
        return await run()
    except Exception as exc:  # one failed scenario must not cost the figures of the others
        _stderr(f"failed: {type(exc).__name__}: {exc}")
        return {"error": f"{type(exc).__name__}: {exc}"}


def _errors(node: Any) -> bool:
    """A failed scenario, or a genrelay job that failed otherwise than the emulator was told
    to make it fail (those are counted apart, as `failed_as_injected`; a baseline's failed
    jobs are its `failed_otherwise` figure)."""
    if isinstance(node, dict):
        failed = "error" in node or bool(node.get("not_succeeded"))
        return failed or any(_errors(v) for v in node.values())
    return False
