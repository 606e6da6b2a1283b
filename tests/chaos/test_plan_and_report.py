"""The runner's arithmetic without servers: load plans, sizes, verdicts, the table, the CLI."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from genrelay.chaos import cli
from genrelay.chaos.environment import Servers
from genrelay.chaos.faults import Fault
from genrelay.chaos.load import IMAGE_ENDPOINTS, VIDEO_ENDPOINT, Load
from genrelay.chaos.report import ScenarioReport, table
from genrelay.chaos.runner import UnsupportedScenarioError, check_supported
from genrelay.chaos.scenarios import BY_NAME, SCENARIOS
from genrelay.deploy.local.stack import KafkaNode, MinioNode


def _report(**changes: object) -> ScenarioReport:
    values: dict[str, object] = {
        "scenario": "kill-replicas",
        "size": "smoke",
        "jobs": 30,
        "faults": (Fault("kill -9 relay", "relay-0", 1.0, 2.0),) * 2,
        "completed": 30,
        "failed": {},
        "lost": 0,
        "extra_paid": 0,
        "events_per_key_max": 1,
        "keys_with_several_events": 0,
        "drain_s": 2.5,
        "wall_s": 8.0,
        "command": "genrelay chaos kill-replicas --smoke",
    }
    values.update(changes)
    return ScenarioReport(**values)  # type: ignore[arg-type]


def test_a_plan_spreads_jobs_and_keys_are_their_prompts() -> None:
    jobs = Load(jobs=4, seconds=2.0, endpoints=(IMAGE_ENDPOINTS[0], VIDEO_ENDPOINT)).plan("p")
    assert [j.key for j in jobs] == ["p-0", "p-1", "p-2", "p-3"]
    assert [j.at for j in jobs] == [0.0, 0.5, 1.0, 1.5]
    assert [j.endpoint for j in jobs] == [IMAGE_ENDPOINTS[0], VIDEO_ENDPOINT] * 2
    records = [json.loads(j.value) for j in jobs]
    assert [r["input"]["prompt"] for r in records] == [j.key for j in jobs]
    assert "num_frames" in records[1]["input"]
    assert records[0]["input"]["image_size"] == {"width": 64, "height": 64}


def test_bursts_rotate_endpoints_so_each_idles_between_its_bursts() -> None:
    jobs = Load(jobs=6, seconds=30.0, bursts=3, endpoints=IMAGE_ENDPOINTS).plan("b")
    assert [(j.at, j.endpoint) for j in jobs[::2]] == [
        (0.0, IMAGE_ENDPOINTS[0]),
        (10.0, IMAGE_ENDPOINTS[1]),
        (20.0, IMAGE_ENDPOINTS[2]),
    ]


def test_more_jobs_keep_the_arrival_rate_and_extend_the_cap() -> None:
    size = BY_NAME["minio-down"].full
    bigger = size.with_jobs(size.load.jobs * 2)
    assert bigger.load.seconds == pytest.approx(size.load.seconds * 2)
    assert bigger.cap_s == pytest.approx(size.cap_s + size.load.seconds)


def test_every_scenario_is_bounded_and_its_smoke_is_small() -> None:
    for scenario in SCENARIOS:
        for size in (scenario.full, scenario.smoke):
            assert 0 < size.load.jobs <= 1000, scenario.name
            assert size.load.seconds < size.cap_s <= 600, scenario.name
        assert scenario.smoke.load.jobs <= 50, scenario.name


def test_a_report_fails_on_any_broken_invariant() -> None:
    assert _report().ok
    assert not _report(lost=1).ok
    assert not _report(extra_paid=1).ok
    assert not _report(keys_with_several_events=1, events_per_key_max=2).ok
    assert not _report(error="fault script: boom").ok
    # A failure with a reason is an outcome, not a broken invariant.
    assert _report(completed=29, failed={"submit_unknown": 1}).ok


def test_the_table_has_one_row_per_scenario_with_the_invariant_columns() -> None:
    text = table([_report(), _report(scenario="429-storm", extra_paid=1, drain_s=None)])
    lines = text.splitlines()
    assert len(lines) == 4
    for column in ("lost", "extra paid", "events/key", "drain after last fault"):
        assert column in lines[0]
    assert "2 x kill -9 relay" in lines[2]
    assert "PASS" in lines[2]
    assert "FAIL" in lines[3]


def test_scenarios_that_stop_servers_refuse_borrowed_ones(tmp_path: Path) -> None:
    borrowed = Servers(KafkaNode(tmp_path / "k"), MinioNode(tmp_path / "m"))
    with pytest.raises(UnsupportedScenarioError, match="own stack"):
        check_supported(BY_NAME["broker-restart"], borrowed, None)
    with pytest.raises(UnsupportedScenarioError, match="Toxiproxy"):
        check_supported(BY_NAME["submit-cut"], borrowed, None)
    check_supported(BY_NAME["429-storm"], borrowed, None)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_lists_scenarios_and_refuses_unknown_ones(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(_args("--list")) == 0
    listed = capsys.readouterr().out
    assert all(s.name in listed for s in SCENARIOS)
    assert cli.main(_args("no-such-scenario")) == 2
    assert cli.main(_args()) == 2
    assert cli.main(_args("kill-replicas", "--jobs", "0")) == 2
