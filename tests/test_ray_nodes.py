"""`--engine ray` on two nodes that share no disk: a Ray cluster on this machine whose second
node runs in a mount namespace of its own, with an empty read-only tmpfs over the folder
that holds the job's DIR. A shard there that touched DIR would fail (nothing to read,
nothing can be written); so the job must get its spec from object storage (an S3 server
on loopback), keep each shard's checkpoint on its node and bring outcomes and artifacts
back to the driver over Ray. The same cluster then loses its second node mid-job.

Needs root (or CAP_SYS_ADMIN) for `unshare --mount`. Skipped where it cannot run, unless
RUNNER_REQUIRE_RAY=1 (CI sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq
import pytest

from runner import storage
from runner.job import EXIT_OK
from tests.jobs import KEY, chat_row, settings_for, write_spec
from tests.simproc import SimProcess

try:
    import ray
except ImportError:  # pragma: no cover - depends on the machine
    ray = None


def _unavailable(reason: str) -> None:
    if os.environ.get("RUNNER_REQUIRE_RAY") == "1":
        pytest.fail(f"RUNNER_REQUIRE_RAY=1 but {reason}")
    pytest.skip(reason)


@dataclass
class Cluster:
    hidden: Path  # the folder the second node cannot see: the jobs' DIRs go in it
    nodes: tuple[Path, Path]  # each node's RUNNER_SHARD_DIR
    second: subprocess.Popen[bytes]  # `unshare ... ray start --block` of the second node

    def kill_second(self) -> None:
        """The second node's machine is gone: its raylet and workers die at once."""
        for pid in _descendants(self.second.pid) | {self.second.pid}:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.second.wait(timeout=30)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3() -> Iterator[dict[str, str]]:
    """An S3-compatible server (moto) on loopback, with one bucket."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "moto did not start"
                time.sleep(0.1)
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], **_creds(env)).create_bucket(
            Bucket="bkt"
        )
        yield env
    finally:
        proc.kill()
        proc.wait()


def _creds(env: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": env["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": env["AWS_SECRET_ACCESS_KEY"],
        "region_name": env["AWS_DEFAULT_REGION"],
    }


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, s3: dict[str, str]) -> Iterator[Cluster]:
    if ray is None:
        _unavailable("Ray is not installed: pip install -e '.[ray]'")
    probe = subprocess.run(
        ["unshare", "--mount", "true"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        _unavailable(f"`unshare --mount` is refused here ({probe.stderr.strip()}): needs root")
    base = tmp_path_factory.mktemp("two-nodes")
    hidden, first, second = base / "jobs", base / "node1", base / "node2"
    for d in (hidden, first, second):
        d.mkdir()
    # The key reaches each node's workers through its environment, never through Ray. The
    # head notices a lost node within about a second (Ray's default is 15 s or more).
    env = {
        **s3,
        "ZAI_API_KEY": KEY,
        "RUNNER_SHARD_DIR": str(first),
        "RAY_health_check_period_ms": "300",
        "RAY_health_check_timeout_ms": "300",
        "RAY_health_check_failure_threshold": "3",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    node: subprocess.Popen[bytes] | None = None
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    session = Path(ray._private.worker._global_node.get_session_dir_path()).name
    try:
        gcs = ray._private.worker._global_node.gcs_address
        # Its own Ray folder too, as on a machine of its own: its sockets, logs and the
        # address file `ray start` leaves (a later `ray.init()` here must not find it).
        ray_tmp = ray._private.worker._global_node.get_temp_dir_path()
        join = (
            f"mount -t tmpfs -o ro tmpfs {hidden} && mount -t tmpfs tmpfs {ray_tmp} && "
            f"exec {sys.executable} -m "
            f"ray.scripts.scripts start --address={gcs} --num-cpus=2 --block "
            "--disable-usage-stats"
        )
        node = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", join],
            env={**os.environ, "RUNNER_SHARD_DIR": str(second)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while sum(n["Alive"] for n in ray.nodes()) < 2:
            assert node.poll() is None, "the second node's `ray start` ended"
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(0.25)
        yield Cluster(hidden, (first, second), node)
    finally:
        if node is not None and node.poll() is None:
            Cluster(hidden, (first, second), node).kill_second()
        ray.shutdown()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        left = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
        assert not [line for line in left.splitlines() if session in line], left


def _descendants(pid: int) -> set[int]:
    table = subprocess.run(["ps", "-eo", "pid,ppid"], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in table.splitlines()[1:]:
        child, parent = (int(x) for x in line.split())
        children.setdefault(parent, []).append(child)
    found, stack = set(), [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def _video(i: int) -> dict[str, Any]:
    body = {"model": "cogvideox-3", "prompt": f"waves {i}"}
    return {"custom_id": f"video-{i}", "url": "/v4/videos/generations", "body": body}


def _spec_in_s3(tmp: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    local = write_spec(tmp / f"{name}.jsonl", rows)
    return Path(storage.upload(local, f"s3://bkt/{name}.jsonl"))


def _run(spec: Path, out: Path, sim: SimProcess) -> Any:
    from runner.ray_engine import run_sharded

    settings = settings_for(out, spec, sim.base_url, concurrency=8, task_max_age=60.0)
    return run_sharded(settings.with_key_from_env(), 4)


def _driver(spec: Path, out: Path, sim: SimProcess) -> subprocess.Popen[str]:
    """`_run` in a process of its own, connected to the cluster; prints its JobResult."""
    gcs = ray._private.worker._global_node.gcs_address
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from runner.ray_engine import run_sharded\n"
        "from tests.jobs import settings_for\n"
        "spec, out, url, gcs = sys.argv[1:]\n"
        "settings = settings_for(Path(out), Path(spec), url, concurrency=8, task_max_age=60.0)\n"
        "result = run_sharded(settings.with_key_from_env(), 4, address=gcs)\n"
        "print(json.dumps({'exit_code': result.exit_code, 'message': result.message}))\n"
    )
    return subprocess.Popen(
        [sys.executable, "-c", code, str(spec), str(out), sim.base_url, gcs],
        cwd=Path(__file__).parent.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop(job: subprocess.Popen[str]) -> None:
    """A driver still running is stopped as Ctrl-C would (its shards cancelled), then
    killed if that does not end it."""
    if job.poll() is None:
        job.send_signal(signal.SIGTERM)
        try:
            job.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            job.kill()
            job.communicate()


def test_a_spec_one_node_cannot_read_stops_the_job_before_anything_is_sent(
    cluster: Cluster,
) -> None:
    from runner.errors import UsageError

    spec = write_spec(cluster.hidden / "spec.jsonl", (chat_row(i) for i in range(40)))
    with SimProcess() as sim:
        with pytest.raises(UsageError) as caught:
            _run(spec, cluster.hidden / "nospec", sim)
        assert sim.stats()["requests"] == {}
    message = str(caught.value)
    assert f"cannot read the spec {spec}" in message
    assert "same path on every node, or in object storage" in message
    assert "Nothing was sent" in message


def test_four_shards_on_two_nodes_without_a_shared_disk(cluster: Cluster, tmp_path: Path) -> None:
    rows = [chat_row(i) for i in range(400)]
    rows[50:50] = [_video(i) for i in range(2)]
    rows[300:300] = [_video(i) for i in range(2, 4)]
    spec = _spec_in_s3(tmp_path, "two-nodes", rows)
    out = cluster.hidden / "out"
    with SimProcess("--concurrency", "8", "--latency", "0.05", "--task-seconds", "0.2") as sim:
        result = _run(spec, out, sim)
        stats = sim.stats()
    assert result.exit_code == EXIT_OK, result.message
    assert len(result.summary["nodes"]) == 2  # shards ended on both nodes
    assert stats["requests"]["chat/completions"] == 400  # every row sent once
    assert stats["requests"]["videos/generations"] == 4
    assert "429" not in stats["statuses"]
    peak = max(m for per_model in stats["peak_concurrency"].values() for m in per_model.values())
    assert 1 < peak <= 8  # the tier held across the nodes
    table = pq.read_table(out / "results.parquet").to_pydict()
    assert table["custom_id"] == [r["custom_id"] for r in rows]  # one each, spec order
    assert set(table["status"]) == {"succeeded"}
    # The videos' files came back into DIR, whole, whichever node downloaded them.
    files = [item for listing in table["artifacts"] if listing for item in orjson.loads(listing)]
    assert len(files) == 8  # a video and its cover for each
    for item in files:
        data = (out / item["path"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == item["sha256"]
        assert (out / (item["path"] + ".json")).is_file()
    for node in cluster.nodes:
        assert list(node.iterdir()) == []  # no node kept anything of the job


def test_with_results_to_the_nodes_upload_the_artifacts_themselves(
    cluster: Cluster, tmp_path: Path
) -> None:
    from runner.ray_engine import run_sharded

    rows = [chat_row(i) for i in range(40)] + [_video(i) for i in range(4)]
    spec = _spec_in_s3(tmp_path, "results-to", rows)
    out = cluster.hidden / "uploaded"
    with SimProcess("--task-seconds", "0.2") as sim:
        settings = settings_for(out, spec, sim.base_url, concurrency=8).with_key_from_env()
        result = run_sharded(settings, 4, results_to="s3://bkt/rt/")
    assert result.exit_code == EXIT_OK, result.message
    table = pq.read_table(out / "results.parquet").to_pydict()
    files = [item for listing in table["artifacts"] if listing for item in orjson.loads(listing)]
    assert len(files) == 8
    for item in files:
        with storage.open_random(f"s3://bkt/rt/{item['path']}") as f:
            assert hashlib.sha256(f.read()).hexdigest() == item["sha256"]
        with storage.open_random(f"s3://bkt/rt/{item['path']}.json") as f:
            assert orjson.loads(f.read())["custom_id"].startswith("video-")
    assert not (out / "artifacts").exists() or not any((out / "artifacts").iterdir())


def test_a_lost_node_costs_only_what_the_driver_did_not_hold(
    cluster: Cluster, tmp_path: Path
) -> None:
    n = 1200
    spec = _spec_in_s3(tmp_path, "lost-node", [chat_row(i) for i in range(n)])
    out = cluster.hidden / "lost"
    second = cluster.nodes[1]
    with SimProcess("--concurrency", "8", "--latency", "0.05") as sim:
        # The job's driver is a process of its own, so that a job that went wrong can be
        # killed: a driver thread left running here would outlive the cluster.
        job = _driver(spec, out, sim)
        try:
            deadline = time.monotonic() + 90
            held: dict[int, str] = {}
            while time.monotonic() < deadline and not held:
                assert job.poll() is None, job.communicate()
                there = sorted(int(p.parent.name) for p in second.glob("*/r*/*/worker.pid"))
                if there and (out / "shards" / "plan.json").exists():
                    plan = orjson.loads((out / "shards" / "plan.json").read_bytes())["shards"]
                    window = plan[there[0]]
                    lo, hi = window["first_seq"], window["first_seq"] + window["rows"]
                    with sqlite3.connect(out / "checkpoint.sqlite") as db:
                        found = db.execute(
                            "SELECT seq, request_id FROM rows WHERE status = 'succeeded' "
                            "AND seq >= ? AND seq < ?",
                            [lo, hi],
                        ).fetchall()
                    if len(found) >= 40:  # the driver holds part of a second-node shard
                        cluster.kill_second()
                        # What it held at the kill: read again, as a batch may have been
                        # merging.
                        with sqlite3.connect(out / "checkpoint.sqlite") as db:
                            held = dict(
                                db.execute(
                                    "SELECT seq, request_id FROM rows WHERE status = 'succeeded'"
                                ).fetchall()
                            )
                time.sleep(0.05)
            assert held, "the second node never held a shard"
            stdout, stderr = job.communicate(timeout=180)
        finally:
            _stop(job)
        sent = sim.stats()["requests"]["chat/completions"]
    assert job.returncode == 0, stderr
    # Ray's workers print to the driver's stdout too: the result is its last line.
    assert orjson.loads(stdout.splitlines()[-1])["exit_code"] == EXIT_OK, stdout
    table = pq.read_table(out / "results.parquet").to_pydict()
    assert table["custom_id"] == [f"row-{i}" for i in range(n)]
    after = dict(zip(range(n), table["request_id"], strict=True))
    # Rows the driver held when the node died were not sent again (same answer), and the
    # resent ones are those of the second node's shards it did not hold yet.
    assert {seq: after[seq] for seq in held} == held
    assert n <= sent <= n + 200, sent
