"""The local stack is real: Kafka and MinIO answer, failures are explained, nothing survives."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from minio import Minio

from genrelay.deploy.local.processes import StackStartError, group_members
from genrelay.deploy.local.stack import HERE, KafkaNode, LocalStack, StackInfo

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


async def test_kafka_produce_consume_round_trip(stack: StackInfo) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])
    finally:
        await admin.close()

    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        for n in range(10):
            await producer.send_and_wait(topic, f"value-{n}".encode(), key=f"k{n}".encode())
    finally:
        await producer.stop()

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=stack.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        seen: set[bytes] = set()
        while len(seen) < 10:
            batch = await consumer.getmany(timeout_ms=5000)
            assert batch, "no records within 5 s"
            seen.update(rec.value for recs in batch.values() for rec in recs if rec.value)
    finally:
        await consumer.stop()
    assert seen == {f"value-{n}".encode() for n in range(10)}


def test_minio_put_get_stat(stack: StackInfo) -> None:
    client = Minio(
        stack.s3_endpoint,
        access_key=stack.s3_access_key,
        secret_key=stack.s3_secret_key,
        secure=False,
    )
    bucket = f"roundtrip-{uuid.uuid4().hex[:8]}"
    client.make_bucket(bucket)
    data = b"\x89PNG genrelay" * 100
    client.put_object(bucket, "a/b.png", io.BytesIO(data), len(data), content_type="image/png")

    stat = client.stat_object(bucket, "a/b.png")
    assert stat.size == len(data)
    assert stat.content_type == "image/png"
    response = client.get_object(bucket, "a/b.png")
    try:
        assert response.read() == data
    finally:
        response.close()
        response.release_conn()


async def test_broker_dying_during_start_names_its_log(tmp_path: Path) -> None:
    # Hold the broker's port so it exits with "address already in use" while starting.
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        node = KafkaNode(tmp_path / "kafka", port=squatter.getsockname()[1])
        with pytest.raises(StackStartError) as failure:
            await node.start(timeout=60)
    message = str(failure.value)
    assert "exited with code" in message
    assert str(node.process.log_path) in message
    assert "Address already in use" in message or "BindException" in message


async def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    stack = LocalStack(tmp_path / "stack")
    await stack.start()
    groups = [p.pid for p in (stack.kafka.process, stack.minio.process) if p.pid]
    assert len(groups) == 2
    assert all(group_members(pgid) for pgid in groups)

    stack.stop()
    stack.stop()  # idempotent
    assert {pgid: group_members(pgid) for pgid in groups} == {pgid: [] for pgid in groups}


def test_second_provision_does_no_network_work() -> None:
    # The session stack already needed a provisioned cache, so this run must find everything.
    done = subprocess.run(
        [str(HERE / "provision.sh")], capture_output=True, text=True, check=True, timeout=60
    )
    steps = [line for line in done.stderr.splitlines() if line.startswith("provision:")]
    assert len(steps) >= 2, done.stderr  # Kafka and MinIO at least
    assert all("(no network work)" in line for line in steps), done.stderr


def test_wheel_carries_every_part(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        timeout=300,
    )
    (wheel,) = tmp_path.glob("genrelay-*.whl")
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    # -S skips site processing, so the editable install's finder cannot answer the imports.
    probe = (
        "import genrelay.consumer, genrelay.producers, genrelay.schemas, genrelay.emulator;"
        "import genrelay.deploy.local.stack, genrelay.bench.cli, genrelay.chaos.cli;"
        "print(genrelay.consumer.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env={"PYTHONPATH": f"{wheel}:{site_packages}"},
        cwd=tmp_path,  # not the repository, whose genrelay/ would shadow the wheel
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert done.stdout.strip().startswith(str(wheel))
    # The service imports none of the developer tools, and the developer tools import without
    # their development dependencies (fal-client, pytest) installed.
    probe = (
        "import sys;"
        "sys.modules.update(dict.fromkeys(['fal_client', 'pytest', 'pyinstrument'], None));"
        "import genrelay.cli, genrelay.consumer.service.relay, genrelay.consumer.service.process;"
        "tools = ('genrelay.bench', 'genrelay.chaos', 'genrelay.deploy', 'genrelay.emulator');"
        "print(sorted(m for m in sys.modules if m.startswith(tools)));"
        "import genrelay.bench.baseline_worker, genrelay.bench.cli, genrelay.chaos.cli"
    )
    service = subprocess.run(
        [sys.executable, "-S", "-c", probe],
        env={"PYTHONPATH": f"{wheel}:{site_packages}"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert service.returncode == 0, service.stderr
    assert service.stdout.strip() == "[]"


def test_cluster_ids_never_look_like_an_option() -> None:
    from genrelay.deploy.local.stack import _cluster_id

    ids = [_cluster_id() for _ in range(2000)]
    assert all(len(i) == 22 and not i.startswith("-") for i in ids)
