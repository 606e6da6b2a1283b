"""The bench's arithmetic: percentiles, histograms, hops, spend, profiles and the checks that
decide its exit code. In memory, no stack."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest

from genrelay.bench.baselines import compare, cpu_multiple
from genrelay.bench.cli import add_arguments, plan_from, read_stack
from genrelay.bench.context import Plan
from genrelay.bench.fairness import FloodPlan, _late_waits
from genrelay.bench.hops import (
    Histogram,
    LedgerTimes,
    TopicTimes,
    parse_counters,
    parse_histograms,
)
from genrelay.bench.measure import percentile, summary_ms
from genrelay.bench.profile import summarise
from genrelay.bench.realistic import naive_over_genrelay
from genrelay.bench.report import missing_figures, required_figures, spend_summary
from genrelay.bench.runner import _errors, expand
from genrelay.bench.services import ProviderConditions, provider_calls, spend
from genrelay.bench.throughput import outcomes
from genrelay.bench.workload import Completion


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert summary_ms([]) == {"n": 0, "p50": None, "p99": None, "mean": None, "max": None}


EXPOSITION = """\
# TYPE genrelay_download_duration_seconds histogram
genrelay_download_duration_seconds_bucket{le="0.01"} 0.0
genrelay_download_duration_seconds_bucket{le="0.05"} 50.0
genrelay_download_duration_seconds_bucket{le="0.1"} 100.0
genrelay_download_duration_seconds_bucket{le="+Inf"} 100.0
genrelay_download_duration_seconds_sum 5.0
genrelay_download_duration_seconds_count 100.0
"""


def test_histogram_quantiles_follow_prometheus_interpolation() -> None:
    found = parse_histograms(EXPOSITION, ["genrelay_download_duration_seconds"])
    histogram = found["genrelay_download_duration_seconds"]
    assert histogram.quantile(0.5) == pytest.approx(0.05)
    assert histogram.quantile(0.99) == pytest.approx(0.099)
    assert histogram.summary_ms() == {"n": 100, "mean": 50.0, "p50": 50.0, "p99": 99.0}


def test_histogram_difference_is_what_was_observed_in_between() -> None:
    earlier = Histogram(((0.05, 10.0), (float("inf"), 10.0)), 0.2, 10.0)
    later = Histogram(((0.05, 30.0), (float("inf"), 40.0)), 2.0, 40.0)
    between = later.minus(earlier)
    assert between.buckets == ((0.05, 20.0), (float("inf"), 30.0))
    assert (between.total, between.count) == pytest.approx((1.8, 30.0))


def test_counters_are_summed_over_their_labels_and_others_ignored() -> None:
    text = "\n".join(
        [
            "# TYPE genrelay_transactions_total counter",
            'genrelay_transactions_total{replica="a"} 40.0',
            'genrelay_transactions_total{replica="b"} 2.0',
            "genrelay_transaction_records_total 130.0",
            "genrelay_transactions_created 1.7e9",
        ]
    )
    names = ("genrelay_transactions", "genrelay_transaction_records")
    assert parse_counters(text, names) == {
        "genrelay_transactions": 42.0,
        "genrelay_transaction_records": 130.0,
    }


def test_webhook_hop_leaves_out_the_file_transfer() -> None:
    times = TopicTimes(
        produced_ms={"k": 1000},
        received_ms={"k": 1010.0},
        hook_ms={"k": 2000},
        completed_ms={"k": 2108},
        ledger={"k": LedgerTimes({}, {"RESULT_READY": 2005.0, "STORED": 2100.0})},
    )
    hops = times.hops(["k"])
    assert hops["record_to_submit_ms"]["p50"] == 10.0
    assert hops["webhook_to_ack_ms"]["p50"] == 13.0  # 5 ms to learn the result, 8 to announce
    assert hops["transfer_ms"]["p50"] == 95.0


def test_a_key_paid_twice_fails_the_spend_check() -> None:
    paid = [{"input": {"prompt": k}} for k in ("a", "b", "b")]
    found = spend(paid, {"a", "b"})
    assert found["per_key"] == 1.5
    assert found["max_per_key"] == 2
    assert not found["ok"]


def test_an_unpaid_key_fails_the_spend_check() -> None:
    found = spend([{"input": {"prompt": "a"}}], {"a", "b"})
    assert found["unpaid_keys"] == 1
    assert not found["ok"]


def test_spend_summary_covers_every_run_and_fails_if_one_overspent() -> None:
    once = spend([{"input": {"prompt": "a"}}], {"a"})
    twice = spend([{"input": {"prompt": "b"}}] * 2, {"b"})
    summary = spend_summary({"throughput": {"spend": once}, "scale": {"x": {"spend": twice}}})
    assert summary["by_run"] == {"throughput": 1.0, "scale.x": 2.0}
    assert summary["per_key"] == 1.5
    assert not summary["ok"]


def test_provider_calls_count_what_the_client_asked_not_webhooks() -> None:
    stats = {"submissions": 10, "file_downloads": 10, "status_polls": 5, "webhooks_delivered": 10}
    calls = provider_calls(stats, 10)
    assert calls["per_job"] == 2.5
    assert calls["webhooks_delivered"] == 10


def test_profile_summary_separates_own_time_from_callers() -> None:
    collapsed = (
        "main (/x/lib/python3.11/asyncio/runners.py:10);"
        "decode (/x/site-packages/pydantic/main.py:5) 3\n"
        "main (/x/lib/python3.11/asyncio/runners.py:10) 1\n"
    )
    found = summarise(collapsed)
    assert found["samples"] == 4
    assert found["own_time"][0] == {"what": "decode (pydantic/main.py)", "share": 0.75}
    assert {"what": "main (asyncio/runners.py)", "share": 1.0} in found["inclusive_time"]
    assert found["by_library"][0] == {"what": "pydantic", "share": 0.75}


def test_missing_figures_are_named() -> None:
    units = ["throughput"]
    results = {
        "required": required_figures(Plan.smoke_test(), units),
        "scenarios": {"throughput": {"jobs_per_second": 1.0}, "spend": {"per_key": 1.0}},
    }
    missing = missing_figures(results)
    assert "throughput.relay_cpu_ms_per_job" in missing
    assert "throughput.jobs_per_second" not in missing
    assert "spend.per_key" not in missing


def test_a_run_that_pays_the_provider_nothing_has_no_spend_to_check() -> None:
    plan = Plan.smoke_test()
    assert "spend.per_key" not in required_figures(plan, ["scale.restore", "fairness"])
    assert "spend.per_key" in required_figures(plan, ["scale.restore", "scale.in-flight"])


def test_baselines_bring_the_throughput_run_they_are_compared_with() -> None:
    assert expand(["baselines"]) == ["throughput", "baselines"]
    assert expand(["scale"]) == ["scale.in-flight", "scale.replicas", "scale.restore"]
    assert expand([])[0] == "throughput"
    assert {"fairness", "backlog", "realistic"} <= set(expand([]))
    assert expand([])[-1] == "scale.restore"


def test_genrelay_is_set_beside_each_baselines_jobs_per_second_and_cpu_per_job() -> None:
    ours = {"jobs_per_second": 150.0, "relay_cpu_ms_per_job": 4.5}
    floors: dict[str, dict[str, Any]] = {
        "floor-job": {"jobs_per_second": 300.0, "cpu_ms_per_job": 2.5},
        "naive": {"jobs_per_second": 75.0, "cpu_ms_per_job": 11.25},
        "broken": {"error": "TimeoutError"},
    }
    assert compare(ours, floors) == {"floor-job": 0.5, "naive": 2.0, "broken": None}
    assert cpu_multiple(ours, floors) == {"floor-job": 1.8, "naive": 0.4, "broken": None}
    assert cpu_multiple({"error": "x"}, floors)["floor-job"] is None
    required = required_figures(Plan(), ["throughput", "baselines"])
    assert "baselines.genrelay_cpu_multiple.floor-job" in required
    assert "baselines.floor-job-aiohttp.jobs_per_second" in required


def test_the_backlog_runs_after_the_throughput_run_it_is_set_beside() -> None:
    assert expand(["backlog", "throughput"]) == ["throughput", "backlog"]
    assert expand(["backlog"]) == ["backlog"]
    units = ["throughput", "backlog"]
    assert "backlog.without_backlog.jobs_per_second" in required_figures(Plan(), units)
    assert "backlog.without_backlog.jobs_per_second" not in required_figures(Plan(), ["backlog"])


def test_provider_conditions_become_emulator_flags() -> None:
    busy = ProviderConditions(
        run_median_ms=3000, run_sigma=0.5, webhook_loss=0.1, failure_rate=0.05, runners=1000
    )
    assert busy.flags() == {
        "run_latency": "lognormal:3000:0.5",
        "webhook_loss_rate": "0.1",
        "failure_rate": "0.05",
        "failure_types": "runner_server_error",
        "concurrency": "1000",
    }
    assert ProviderConditions().flags() == {"run_latency": "fixed:0", "webhook_loss_rate": "0.0"}
    assert busy.slowest_job_seconds() == pytest.approx(3 * 7.389, rel=1e-3)


def test_injected_failures_are_expected_and_other_failures_are_not() -> None:
    done = [
        Completion(1, "succeeded"),
        Completion(2, "failed", "runner_server_error"),
        Completion(3, "failed", "download_failed"),
        Completion(4, "expired"),
    ]
    injecting = ProviderConditions(failure_rate=0.05)
    assert outcomes(done, injecting) == {
        "not_succeeded": {"failed": 1, "expired": 1},
        "failed_as_injected": 1,
    }
    assert outcomes(done, ProviderConditions()) == {"not_succeeded": {"failed": 2, "expired": 1}}


def test_failures_as_injected_leave_the_run_ok_and_others_do_not() -> None:
    ours: dict[str, Any] = {"not_succeeded": {}, "failed_as_injected": 5}
    # The naive loop losing a connection the server closed is a figure of the naive loop.
    naive = {"failed_otherwise": 1, "failed_as_injected": 4}
    assert not _errors({"realistic": {"genrelay": ours, "naive": naive}})
    ours["not_succeeded"] = {"failed": 1}
    assert _errors({"realistic": {"genrelay": ours, "naive": naive}})
    assert _errors({"realistic": {"genrelay": {"error": "TimeoutError"}, "naive": naive}})


def test_naive_spend_is_a_multiple_of_genrelays() -> None:
    ours = {"provider_calls": {"per_job": 3.2}, "relay_cpu_ms_per_job": 8.0}
    naive = {"provider_calls": {"per_job": 32.0}, "cpu_ms_per_job": 20.0}
    assert naive_over_genrelay(ours, naive) == {
        "provider_calls_per_job": 10.0,
        "cpu_ms_per_job": 2.5,
    }
    assert naive_over_genrelay({"error": "x"}, naive)["cpu_ms_per_job"] is None


def test_command_line_builds_the_smoke_plan_and_reads_a_stack_file(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--smoke", "--jobs", "200", "--scenario", "throughput"])
    plan = plan_from(args)
    assert (plan.smoke, plan.jobs, plan.paced_jobs) == (True, 200, 100)
    assert args.scenarios == ["throughput"]

    stack_file = tmp_path / "stack.json"
    stack_file.write_text(
        '{"kafka_bootstrap": "127.0.0.1:1", "s3_endpoint": "127.0.0.1:2",'
        ' "s3_access_key": "a", "s3_secret_key": "b", "emulator": "http://x"}'
    )
    stack = read_stack(stack_file)
    assert stack.kafka_bootstrap == "127.0.0.1:1"
    assert stack.extra == {"emulator": "http://x"}


async def test_the_fairness_figure_compares_shares_with_arrival_order_on_one_clock() -> None:
    plan = FloodPlan(flood=300, late=10, slots=10, run_seconds=0.2, late_after_seconds=1.0)
    fair = await _late_waits(plan, tenants=True)
    fifo = await _late_waits(plan, tenants=False)
    assert len(fair) == len(fifo) == 10
    # Shared: the late tenant takes the next free slots up to half of them, so its ten start
    # within two runs (its equal share's wait). In arrival order each waits for the 300
    # ahead of it: until the 30th run ends.
    assert max(fair) == pytest.approx(10 / (10 / 2) * 0.2)
    assert min(fifo) == pytest.approx(300 / 10 * 0.2 - 1.0)
