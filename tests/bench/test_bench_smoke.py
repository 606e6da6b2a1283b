"""`genrelay bench --smoke` works end to end on the session's stack: every scenario runs, every
figure is reported, every key was paid for exactly once, and the run leaves no bucket behind.
How fast is not checked here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from minio import Minio

from genrelay.bench.context import Plan
from genrelay.bench.report import lookup, render_table, write_json
from genrelay.bench.runner import run_bench
from genrelay.deploy.local.stack import StackInfo

pytestmark = pytest.mark.integration


@pytest.mark.timeout(420)
async def test_smoke_bench_reports_every_figure_and_pays_once_per_key(
    stack: StackInfo, tmp_path: Path
) -> None:
    results = await run_bench(stack, Plan.smoke_test(), workdir=tmp_path, progress=print)

    assert results["missing"] == [], render_table(results)
    for path in results["required"]:
        assert isinstance(lookup(results["scenarios"], path), int | float), path
    spend = results["scenarios"]["spend"]
    assert spend["per_key"] == 1.0
    assert spend["submissions"] == spend["unique_keys"] > 0
    assert all(per_key == 1.0 for per_key in spend["by_run"].values()), spend["by_run"]
    assert results["ok"], render_table(results)

    out = tmp_path / "bench.json"
    write_json(results, out)
    assert json.loads(out.read_text())["scenarios"]["spend"]["per_key"] == 1.0
    assert "1.000" in render_table(results)

    run_bucket = f"bench-{results['meta']['run_id']}"
    assert run_bucket in results["meta"]["buckets_removed"]
    client = Minio(
        stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,
        secure=False,
    )
    left = [
        bucket.name
        for bucket in client.list_buckets()
        if bucket.name == run_bucket or bucket.name.startswith(run_bucket + "-")
    ]
    assert left == []
