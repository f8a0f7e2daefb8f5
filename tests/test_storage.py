"""Specs on object storage, against an S3-compatible server (moto) started on loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# moto[server] is in the dev extra (and so in CI): a missing one fails here, never skips.
import moto.server  # noqa: F401
import orjson
import pytest

from runner import storage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
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
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        import boto3

        boto3.client("s3").create_bucket(Bucket="bkt")
        yield env
    finally:
        proc.kill()
        proc.wait()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _spec(path: Path, n: int) -> Path:
    with path.open("wb") as f:
        for i in range(n):
            body = {"model": "glm-4-flash", "messages": [{"role": "user", "content": f"hi {i}"}]}
            f.write(orjson.dumps({"custom_id": f"r{i}", "body": body}) + b"\n")
    return path


def _runner(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args], capture_output=True, text=True, timeout=120
    )


def test_upload_and_ranged_read(s3_env: dict[str, str], tmp_path: Path) -> None:
    local = _spec(tmp_path / "s.jsonl", 20)
    assert storage.upload(local, "s3://bkt/t/s.jsonl") == "s3://bkt/t/s.jsonl"
    f = storage.open_random("s3://bkt/t/s.jsonl")
    f.seek(10)
    assert f.read(5) == local.read_bytes()[10:15]


def test_run_spec_from_s3(s3_env: dict[str, str], tmp_path: Path) -> None:
    storage.upload(_spec(tmp_path / "s.jsonl", 30), "s3://bkt/run/spec.jsonl")
    out = tmp_path / "out"
    done = _runner("run", "s3://bkt/run/spec.jsonl", "--out", str(out), "--provider", "sim")
    assert done.returncode == 0, done.stderr
    import pyarrow.parquet as pq

    assert pq.read_table(out / "results.parquet").num_rows == 30
    again = _runner("run", "s3://bkt/run/spec.jsonl", "--out", str(out), "--provider", "sim")
    assert again.returncode == 0, again.stderr
    assert "30 succeeded" in again.stdout + again.stderr


def test_missing_bucket_names_it(s3_env: dict[str, str], tmp_path: Path) -> None:
    for cmd in (["validate"], ["run", "--out", str(tmp_path / "o"), "--provider", "sim"]):
        res = _runner(cmd[0], "s3://no-such-bucket/spec.jsonl", *cmd[1:])
        assert res.returncode == 2
        assert "no-such-bucket" in res.stderr + res.stdout
        assert "testing" not in res.stderr + res.stdout
    with pytest.raises(storage.StorageError, match="no-such-bucket"):
        storage.check_bucket("s3://no-such-bucket/out/")


def test_results_to_s3(s3_env: dict[str, str], tmp_path: Path) -> None:
    storage.upload(_spec(tmp_path / "s.jsonl", 12), "s3://bkt/rt/spec.jsonl")
    out = tmp_path / "out"
    args = ("run", "s3://bkt/rt/spec.jsonl", "--out", str(out), "--provider", "sim")
    done = _runner(*args, "--results-to", "s3://bkt/rt/out/")
    assert done.returncode == 0, done.stderr
    import pyarrow.parquet as pq

    with storage.open_random("s3://bkt/rt/out/results.parquet") as f:
        assert pq.read_table(f).num_rows == 12
    refused = _runner(*args[:3], str(tmp_path / "o2"), *args[4:], "--results-to", "s3://nob/o/")
    assert refused.returncode == 2
    assert "'nob'" in refused.stderr
    assert not (tmp_path / "o2" / "checkpoint.sqlite").exists()  # stopped before anything


def test_refused_credentials_name_the_bucket(tmp_path: Path) -> None:
    """A server that checks credentials (moto with auth on) refuses unknown keys: exit 2."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        env = {
            **os.environ,
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "AKIAWRONGKEY",
            "AWS_SECRET_ACCESS_KEY": "wrong-secret-value",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        out = tmp_path / "out"
        res = subprocess.run(
            [
                sys.executable,
                "-m",
                "runner",
                "run",
                "s3://locked/spec.jsonl",
                "--out",
                str(out),
                "--provider",
                "sim",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert res.returncode == 2
        assert "'locked'" in res.stderr and "refused" in res.stderr
        assert "wrong-secret-value" not in res.stderr + res.stdout
        assert not (out / "checkpoint.sqlite").exists()
    finally:
        proc.kill()
        proc.wait()
