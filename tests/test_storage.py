"""Specs on object storage, against an S3-compatible server (moto) started on loopback."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# moto[server] is in the dev extra (and so in CI): a missing one fails here, never skips.
import moto.server  # noqa: F401
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import reliability_harness as h
from simproc import SimProcess

from runner import Settings, storage


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _moto(**server_env: str) -> Iterator[int]:
    """moto's S3 server on a free loopback port, as its own process; yields the port."""
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        env={**os.environ, **server_env},
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
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with _moto() as port:
        env = {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            import boto3

            boto3.client("s3").create_bucket(Bucket="bkt")
            yield env
        finally:
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
    # Uploaded as the bytes are: a name ending .gz is not compressed on the way.
    storage.upload(local, "s3://bkt/t/s.jsonl.gz")
    with storage.open_random("s3://bkt/t/s.jsonl.gz") as g:
        assert g.read() == local.read_bytes()


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
    # The object's size and ETag are its fingerprint: replaced, the resume is refused.
    storage.upload(_spec(tmp_path / "s2.jsonl", 31), "s3://bkt/run/spec.jsonl")
    changed = _runner("run", "s3://bkt/run/spec.jsonl", "--out", str(out), "--provider", "sim")
    assert changed.returncode == 2 and "the spec changed" in changed.stderr
    assert "s3://bkt/run/spec.jsonl" in changed.stderr


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
    """A server that checks credentials (moto with auth on) refuses unknown keys: the spec's
    bucket or the results' bucket, exit 2 with one message naming it, and nothing sent."""
    spec = h.write_spec(tmp_path / "s.jsonl", [h.chat_line("a", "hello")])
    with _moto(INITIAL_NO_AUTH_ACTION_COUNT="0") as port, SimProcess() as sim:
        env = {
            **h.runner_env(),
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "AKIAWRONGKEY",
            "AWS_SECRET_ACCESS_KEY": "wrong-secret-value",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        for k, (source, extra) in enumerate(
            [("s3://locked/spec.jsonl", []), (str(spec), ["--results-to", "s3://locked/out/"])]
        ):
            out = tmp_path / f"out{k}"
            res = subprocess.run(
                [sys.executable, "-m", "runner", "run", source, "--out", str(out),
                 "--base-url", sim.base_url, "--no-progress", *extra],
                capture_output=True, text=True, timeout=120, env=env,
            )  # fmt: skip
            assert res.returncode == 2, res.stderr
            assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
            assert "'locked'" in res.stderr and "refused" in res.stderr
            assert "wrong-secret-value" not in res.stderr + res.stdout
            assert not (out / "checkpoint.sqlite").exists()
        assert sum(sim.stats()["requests"].values()) == 0


# -- a job whose spec and results live in a bucket -------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        capture_output=True, text=True, timeout=300, env=h.runner_env(),
    )  # fmt: skip


def _read_url(url: str) -> pa.Table:
    with storage.open_random(url) as f:
        return pq.read_table(f)


def _bodies_sent(stats: dict[str, Any], spec: Path) -> list[int]:
    """How often the platform accepted each spec row's body, in spec order (its ledger)."""
    by_fp: dict[str, int] = stats["submissions_by_fingerprint"]
    return [
        by_fp.get(h.sim_fingerprint("chat/completions", orjson.loads(line)["body"]), 0)
        for line in h.spec_lines(spec)
    ]


def test_spec_url_and_results_to_are_recorded_in_canonical_form() -> None:
    settings = Settings(spec=Path("s3://bkt/a/spec.jsonl"), out=Path("o"), results_to="s3://b/o/")
    record = settings.to_record()
    assert record["spec"] == "s3://bkt/a/spec.jsonl"  # not the s3:/bkt/... a Path folds it to
    assert record["results_to"] == "s3://b/o/"
    again = Settings.from_record(record)
    assert again.to_record()["spec"] == "s3://bkt/a/spec.jsonl"
    assert storage.is_url(again.spec) and again.results_to == "s3://b/o/"


def test_killed_run_of_an_s3_spec_resumes_and_sends_nothing_twice(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """kill -9 mid-run; `runner resume OUT` re-opens the spec's URL and uploads to the
    recorded --results-to. The ledger: every row accepted, none finished before the kill
    sent again, and no more resent than the requests in flight at the kill."""
    n, cap = 800, 16
    spec = h.write_spec(tmp_path / "s.jsonl", (h.chat_line(f"k{i}", f"row k{i}") for i in range(n)))
    storage.upload(spec, "s3://bkt/kill/spec.jsonl")
    out = tmp_path / "out"
    with SimProcess("--latency", "0.05") as sim:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", "s3://bkt/kill/spec.jsonl", "--out",
             str(out), "--base-url", sim.base_url, "--no-progress", "--concurrency", str(cap),
             "--results-to", "s3://bkt/kill/out/"],
            env=h.runner_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if h.observe(out).statuses.get("succeeded", 0) >= 200:
                break
            time.sleep(0.02)
        proc.kill()
        assert proc.wait() == -9, "the run ended before it could be killed"
        done_before = {r["custom_id"] for r in h.read_rows_ro(out) if r["status"] == "succeeded"}
        assert 0 < len(done_before) < n
        time.sleep(0.5)  # the requests cut by the kill reach the ledger (latency 0.05 s)
        seen_at_kill = {f"k{i}" for i, k in enumerate(_bodies_sent(sim.stats(), spec)) if k}
        db = sqlite3.connect(out / "checkpoint.sqlite")
        spec_path, record = db.execute("SELECT spec_path, settings FROM job").fetchone()
        db.close()
        assert spec_path == "s3://bkt/kill/spec.jsonl"
        assert orjson.loads(record)["results_to"] == "s3://bkt/kill/out/"
        resumed = _cli("resume", str(out), "--no-progress")
        assert resumed.returncode == 0, resumed.stderr
        assert "uploaded: s3://bkt/kill/out/results.parquet" in resumed.stdout
        stats = sim.stats()
    sent = _bodies_sent(stats, spec)
    assert min(sent) == 1, "a row was never sent"
    again = {f"k{i}" for i, k in enumerate(sent) if k > 1}
    assert not again & done_before, "a row finished before the kill was sent again"
    # Sent again: only rows the platform had when the process died and whose answers it
    # had not committed, i.e. in flight (a few requests, and answers awaiting the writer).
    in_flight = seen_at_kill - done_before
    assert again <= in_flight, again - in_flight
    assert len(in_flight) <= 3 * cap, in_flight
    table = _read_url("s3://bkt/kill/out/results.parquet")
    assert table.num_rows == n
    assert set(table.column("status").to_pylist()) == {"succeeded"}


def test_parquet_spec_on_s3_is_read_by_row_group(s3_env: dict[str, str], tmp_path: Path) -> None:
    n = 300
    rows = [h.chat_line(f"p{i}", f"parquet row {i}") for i in range(n)]
    local = tmp_path / "spec.parquet"
    pq.write_table(pa.Table.from_pylist(rows), local, row_group_size=64)
    storage.upload(local, "s3://bkt/pq/spec.parquet")
    out = tmp_path / "out"
    with SimProcess("--latency", "0.001") as sim:
        done = _cli("run", "s3://bkt/pq/spec.parquet", "--out", str(out), "--base-url",
                    sim.base_url, "--no-progress")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert _bodies_sent(sim.stats(), _jsonl_of(rows, tmp_path / "same.jsonl")) == [1] * n
    table = pq.read_table(out / "results.parquet")
    assert table.column("custom_id").to_pylist() == [f"p{i}" for i in range(n)]
    # A resume reads no row group whose rows are all done, and gets the same pending rows.
    from runner.spec import read_spec

    skip = bytearray(b"\xff" * 17 + b"\x0f" + b"\x00" * 3 + b"\x01")  # 0-139 done, 168
    pending = [r for b in read_spec(Path("s3://bkt/pq/spec.parquet"), skip=skip) for r in b]
    assert [(r.seq, r.line, r.custom_id) for r in pending] == [
        (i, i + 1, f"p{i}") for i in range(140, n) if i != 168
    ]


def _jsonl_of(rows: list[dict[str, Any]], path: Path) -> Path:
    return h.write_spec(path, rows)


def test_generate_reads_a_parquet_table_from_s3(s3_env: dict[str, str], tmp_path: Path) -> None:
    import runner

    local = tmp_path / "topics.parquet"
    topics = [{"id": i, "topic": f"topic {i}"} for i in range(40)]
    pq.write_table(pa.Table.from_pylist(topics), local, row_group_size=8)
    storage.upload(local, "s3://bkt/gen/topics.parquet")
    with SimProcess("--latency", "0.001") as sim:
        table = runner.generate(
            "s3://bkt/gen/topics.parquet", prompt="A book about {topic}.", model="glm-4.5-air",
            out=tmp_path / "out", base_url=sim.base_url, progress=False, cache=False,
        )  # fmt: skip
    assert table.column("id").to_pylist() == list(range(40))
    assert table.column("status").to_pylist() == ["succeeded"] * 40
    with pytest.raises(runner.UsageError, match="'no-such-bucket'"):
        runner.generate(
            "s3://no-such-bucket/t.parquet", prompt="{topic}", model="glm-4.5-air",
            out=tmp_path / "o2", base_url="http://127.0.0.1:9/api/paas/v4", progress=False,
        )  # fmt: skip


def test_failed_upload_keeps_the_results_and_export_pushes_them(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """The bucket goes away while the job runs: the upload fails with one message naming
    the export command, results.parquet stays in OUT; `runner export OUT --to URL` then
    pushes them, and `runner report OUT` uploads its page beside them."""
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="gone")
    n = 60
    spec = h.write_spec(tmp_path / "s.jsonl", (h.chat_line(f"u{i}", f"up {i}") for i in range(n)))
    out = tmp_path / "out"
    with SimProcess("--latency", "0.1") as sim:
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "run", str(spec), "--out", str(out), "--base-url",
             sim.base_url, "--no-progress", "--concurrency", "4", "--results-to", "s3://gone/r/"],
            env=h.runner_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        while h.observe(out).statuses.get("succeeded", 0) < 1:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        s3.delete_bucket(Bucket="gone")  # after the check at the start
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 3, stderr
    assert "'gone'" in stderr and f"runner export {out} --to s3://gone/r/" in stderr
    assert "Traceback" not in stderr and "testing" not in stderr + stdout
    assert pq.read_table(out / "results.parquet").num_rows == n  # the local copy stays
    refused = _cli("export", str(out), "--to", "s3://gone/r/")
    assert refused.returncode == 2 and "'gone'" in refused.stderr
    s3.create_bucket(Bucket="gone")
    pushed = _cli("export", str(out), "--to", "s3://gone/r/")
    assert pushed.returncode == 0, pushed.stderr
    assert _read_url("s3://gone/r/results.parquet").num_rows == n
    assert not list(out.glob(".export-*"))  # the file written for the upload is gone
    page = _cli("report", str(out))
    assert page.returncode == 0, page.stderr
    assert "uploaded: s3://gone/r/report.html" in page.stdout
    with storage.open_random("s3://gone/r/report.html") as f:
        assert f.read() == (out / "report.html").read_bytes()


def _rows(url: str, skip: bytearray, marks: Path | None) -> list[tuple[Any, ...]]:
    from runner.spec import read_spec

    got = []
    for batch in read_spec(Path(url), skip=skip, marks=marks, max_line_bytes=200):
        got += [(r.seq, r.line, getattr(r, "custom_id", None), str(r)) for r in batch]
    return got


def test_a_resume_seeks_past_done_rows_to_the_same_rows(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """Marks left by the count let a resume start at the last mark before its first pending
    row; what it yields is exactly what reading from byte 0 yields (blank lines, CRLF, an
    over-long line and a BOM included), and a replaced object's marks are ignored."""
    from runner.spec import count_lines
    from runner.spec.reader import _resume_mark

    lines = [b"\xef\xbb\xbf" + orjson.dumps(h.chat_line("m0", "first"))]
    for i in range(1, 400):
        line = orjson.dumps(h.chat_line(f"m{i}", f"row {i} " + "x" * (i % 37)))
        lines.append(line + b"\r" if i % 5 == 0 else line)
        if i % 11 == 0:
            lines.append(b"   ")  # a blank line is no row
    lines[123] = b'{"custom_id": "long", "body": "' + b"y" * 300 + b'"}'
    local = tmp_path / "m.jsonl"
    local.write_bytes(b"\n".join(lines) + b"\n")
    url = "s3://bkt/marks/m.jsonl"
    storage.upload(local, url)
    marks = tmp_path / "spec.marks"
    n = count_lines(Path(url), marks, every=2048)
    assert n == count_lines(local)
    for done_upto in (0, 1, 57, 200, 333, n):
        skip = bytearray((n + 7) // 8)
        for seq in [*range(done_upto), done_upto + 3, n - 1]:
            if seq < n:
                skip[seq >> 3] |= 1 << (seq & 7)

        assert _rows(url, skip, marks) == _rows(url, skip, None)
        start = _resume_mark(Path(url), marks, skip)
        if done_upto >= 57:
            assert start is not None and 0 < start[0] <= done_upto and start[1] > 2048
    storage.upload(_spec(tmp_path / "other.jsonl", 5), url)
    assert _resume_mark(Path(url), marks, b"\xff") is None  # another version of the object


def test_a_job_file_names_a_spec_url_and_results_to(s3_env: dict[str, str], tmp_path: Path) -> None:
    storage.upload(_spec(tmp_path / "s.jsonl", 7), "s3://bkt/jf/spec.jsonl")
    job = tmp_path / "job.toml"
    job.write_text('spec = "s3://bkt/jf/spec.jsonl"\nout = "o"\nresults_to = "s3://bkt/jf/out"\n')
    done = _runner("run", str(job), "--provider", "sim")
    assert done.returncode == 0, done.stderr
    assert "uploaded: s3://bkt/jf/out/results.parquet" in done.stdout
    assert _read_url("s3://bkt/jf/out/results.parquet").num_rows == 7


class _DroppingProxy:
    """A TCP proxy on loopback that resets its first `drops` connections, then forwards to
    `port`: a store that is unreachable for a while, then answers."""

    def __init__(self, port: int, drops: int) -> None:
        self.port, self.drops, self.accepted = port, drops, 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.address = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            if self.accepted <= self.drops:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()  # a reset, as from a store restarting or a proxy in trouble
                continue
            up = socket.create_connection(("127.0.0.1", self.port))
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def test_an_upload_outlasts_a_store_that_resets_connections(
    s3_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 connections reset in a row: more than the S3 client's own retries absorb (one try
    of ours gives up after about 12), so the upload lands only through storage.upload's
    retries. 12 MiB: a multipart upload."""
    port = int(s3_env["AWS_ENDPOINT_URL"].rsplit(":", 1)[1])
    proxy = _DroppingProxy(port, drops=40)
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.address)
    local = tmp_path / "big.bin"
    local.write_bytes(os.urandom(12 << 20))
    try:
        assert storage.upload(local, "s3://bkt/retry/big.bin") == "s3://bkt/retry/big.bin"
    finally:
        proxy.close()
    assert proxy.accepted > 40
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["AWS_ENDPOINT_URL"])
    with storage.open_random("s3://bkt/retry/big.bin") as f:
        assert f.read() == local.read_bytes()


def test_credentials_in_a_url_are_refused_and_never_printed(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """pyarrow would take keys from the URL; the runner records and prints its URLs, so a
    URL with credentials is refused at once (exit 2), naming only the bucket."""
    spec = _spec(tmp_path / "s.jsonl", 2)
    cases = [
        ("run", "s3://AKIAEXAMPLE:hush-secret-1@bkt/spec.jsonl"),
        ("run", str(spec), "--results-to", "s3://bkt/out?secret_key=hush-secret-2"),
        ("run", str(spec), "--results-to", "s3://AKIAEXAMPLE:hush-secret-3@bkt/out/"),
        ("validate", "s3://bkt/spec.jsonl?access_key=A&secret_key=hush-secret-4"),
    ]
    for k, (cmd, *args) in enumerate(cases):
        out = ["--out", str(tmp_path / f"o{k}"), "--provider", "sim"] if cmd == "run" else []
        res = _runner(cmd, *args[:1], *out, *args[1:])
        assert res.returncode == 2, (args, res.stderr)
        assert "hush-secret" not in res.stdout + res.stderr
        assert "s3://bkt/" in res.stderr and "environment" in res.stderr
        assert not (tmp_path / f"o{k}" / "checkpoint.sqlite").exists()
