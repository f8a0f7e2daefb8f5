"""Reliability evidence: SIGKILL at any moment, fault storms, hostile specs, secrets, disk faults.

Each test proves one guarantee of docs/RELIABILITY.md end to end: real `runner` processes
against a simulator process where a kill or a mount is involved, `run_job` in process where
the test must watch the job while it runs. The harness (tests/reliability_harness.py) is
the one `make soak` (bench/soak.py) drives for 100+ kills; here it runs a short version.

Four of these first failed on real bugs (two runners on one folder, disk full mid-run,
damaged pages, rate limits spending the transient budget); they now guard the fixes.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import sqlite3
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import orjson
import pyarrow.parquet as pq
import pytest
import reliability_harness as h
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings

from runner import RetryConfig, Settings, run_job
from runner.endpoints import raise_for_answer
from runner.errors import FatalAPIError, RateLimited, RetryableError
from runner.http import make_transport
from runner.retry import build_retrying
from runner.settings import Secret
from runner.sim import SimConfig, Simulator

ROOT = Path(__file__).resolve().parents[1]


def cli(*args: str, key: str = h.KEY, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m runner ARGS` as a user would run it; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=h.runner_env(key), capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )  # fmt: skip


def run_cli(spec: Path, out: Path, base_url: str, *extra: str, key: str = h.KEY) -> Any:
    return cli(*h.runner_cmd(spec, out, base_url, *extra)[3:], key=key)


def chat_spec(path: Path, n: int, prefix: str = "c") -> Path:
    return h.write_spec(path, (h.chat_line(f"{prefix}{i}", f"row {prefix}{i}") for i in range(n)))


def clean_error(r: subprocess.CompletedProcess[str], *words: str) -> None:
    """One `error:` line a user can act on: no traceback, and the words that explain it."""
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stderr.startswith("error: "), r.stderr[-2000:]
    for w in words:
        assert w.lower() in r.stderr.lower(), (w, r.stderr)


def rows_done(out: Path) -> int:
    return h.observe(out).statuses.get("succeeded", 0)


# -- 1. SIGKILL at any moment --------------------------------------------------------------------


def test_sigkill_at_any_moment_loses_nothing_and_submits_each_task_once(tmp_path: Path) -> None:
    """Ten SIGKILLs (startup, mid-pool, at a commit, in the submit window, while polling,
    mid-download) on a job of chat and video rows; then every promise is audited."""
    run = h.crash_loop(tmp_path, kills=10, seed=20261125)
    assert len(run.kills) >= 8, run.kills  # a fast machine may finish the job a kill or two early
    assert all(k.integrity == "ok" for k in run.kills), run.kills
    flags = run.flags()
    assert flags["submitting"] + flags["submitted"] > 0, run.kills  # killed with tasks open
    assert run.final_rc == 1  # the spec's row errors, task failures and malformed lines
    audit = h.audit(run.out, run.spec, run.stats)
    assert audit.duplicate_task_submissions == 0
    assert audit.invalid == 2 and audit.errors["1301"] >= 1 and audit.errors["task_failed"] >= 1
    assert h.check_artifacts(run.out, h.read_rows(run.out)) > 0
    for log in run.logs:  # no run, killed or not, printed the key
        assert h.KEY not in log.read_text(errors="replace")


# -- 2. a fault storm ------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_fault_storm_completes_and_concurrency_drops_then_recovers(tmp_path: Path) -> None:
    """4 s of 30 % 429, 5 % 500, 5 % 503, 2 % drops and 2 % stalls (2 s, timeout 1 s), then
    calm: every row ends terminal, and the runner's concurrency drops, then regrows."""
    s = await h.storm(tmp_path)
    assert {"429", "500", "503", "drop", "stall"} <= set(s.faults), s.faults
    assert s.exit_code in (0, 1)
    assert len(s.rows) == 4000 and all(r["status"] in h.TERMINAL for r in s.rows)
    failed = [r for r in s.rows if r["status"] == "failed"]
    assert all(r["error_message"].startswith("gave up after") for r in failed), failed[:3]
    assert len(failed) <= 10  # see test_rate_limits_do_not_spend_the_transient_budget
    # The runner's requests in flight: shrunk under the storm, back near the cap after it.
    detail = (s.storm_in_flight, s.recovered_after, s.calm_in_flight, s.per_second)
    assert s.recovered_after is not None and s.recovered_after < 15, detail
    assert s.calm_in_flight >= 0.75 * s.cap, detail
    assert s.storm_in_flight <= 0.7 * s.calm_in_flight, detail


def test_rate_limits_do_not_spend_the_transient_budget() -> None:
    """Seven 1302s then one 500: a row with one transient error must get another try."""
    answers: list[Exception] = [RateLimited("1302", code="1302", status=429)] * 7
    answers.append(RetryableError("500", status=500))

    async def attempts() -> int:
        n = 0
        async for attempt in build_retrying(RetryConfig(testing=True)):
            with attempt:
                n += 1
                if n <= len(answers):
                    raise answers[n - 1]
        return n

    assert anyio.run(attempts) == 9


# -- 3. hostile specs, end to end ----------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_sim() -> Iterator[tuple[anyio.from_thread.BlockingPortal, Simulator]]:
    """One in-process simulator for every hypothesis example, on a loop in its own thread."""
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(Simulator(SimConfig())) as sim,
    ):
        yield portal, sim


@given(spec=h.hostile_lines())
@hsettings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_hostile_spec_files_end_to_end(
    shared_sim: tuple[anyio.from_thread.BlockingPortal, Simulator], spec: Any
) -> None:
    """Valid and malformed lines mixed: no crash, each bad line a line-numbered
    `invalid_row`, every valid row answered, results.parquet the same rows."""
    import tempfile

    portal, sim = shared_sim
    data, lines = spec
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "spec.jsonl"
        path.write_bytes(data)
        settings = Settings(
            spec=path, out=Path(tmp) / "out", base_url=sim.base_url, api_key=Secret(h.KEY),
            model=h.CHAT_MODEL, endpoint="chat/completions", concurrency=4, progress=False,
            retry=RetryConfig(testing=True),
        )  # fmt: skip
        result = portal.call(functools.partial(run_job, settings, handle_signals=False))
        rows = h.read_rows(Path(tmp) / "out")
        good, bad = h.check_hostile(rows, lines)
        # A spec with no valid row sends nothing: a usage error (2), not failed rows (1).
        expected = 0 if not bad else 1 if good else 2
        assert result.exit_code == expected, result.message
        assert pq.read_table(Path(tmp) / "out" / "results.parquet").num_rows == good + bad


# -- 4. secrets --------------------------------------------------------------------------------

BAD_KEY = "reliability-BAD-key-93ab.DO-NOT-LEAK"
POOL_KEY = "reliability-pool-key-2e8d.DO-NOT-LEAK-EITHER"


def _strings_of_parquet(path: Path) -> str:
    """Parquet pages are compressed: search the decoded values, not the bytes."""
    return repr(pq.read_table(path).to_pylist())


def test_the_api_key_is_never_written_printed_or_raised(tmp_path: Path) -> None:
    """401 with a wrong key, 1113 mid-job on a pool of two keys, then resume with downloads,
    status and exports: no key of the pool appears in any file, any output, or any error's
    text or repr."""
    rows = [h.chat_line(f"c{i}", f"question {i}") for i in range(6)]
    rows += [h.video_line("v0", "a lighthouse"), h.chat_line("bad", "x [[sim:1214]]")]
    spec = h.write_spec(tmp_path / "spec.jsonl", rows)
    out = tmp_path / "out"
    outputs: list[str] = []
    with h.SimProcess(
        "--api-key", h.KEY, "--api-key", POOL_KEY, "--task-seconds", "0.3",
        "--balance-requests", "3",
    ) as sim:  # fmt: skip
        r = run_cli(spec, out, sim.base_url, "--concurrency", "2", key=BAD_KEY)
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 3 and "ZAI_API_KEY" in r.stderr, r.stderr  # the 401 path
        r = run_cli(spec, out, sim.base_url, "--concurrency", "2", key=f"{h.KEY},{POOL_KEY}")
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 3 and "1113" in r.stderr, r.stderr  # balance: stop, resumable
        assert "every key is retired" in r.stderr, r.stderr
        sim.configure(balance_requests=None)
        r = cli("resume", str(out), key=f"{h.KEY},{POOL_KEY}")  # with the progress display on
        outputs += [r.stdout, r.stderr]
        assert r.returncode == 1, r.stderr  # the 1214 row
        for args in (
            ("status", str(out)),
            ("status", str(out), "--json"),
            ("export", str(out), "--format", "jsonl", "-o", str(tmp_path / "o.jsonl")),
            ("export", str(out), "--format", "parquet", "-o", str(tmp_path / "o.parquet")),
        ):
            r = cli(*args)
            assert r.returncode == 0, r.stderr
            outputs += [r.stdout, r.stderr]
        stats = sim.stats()
        # The Python-side errors of a refused key: their text, repr and traceback.
        transport = make_transport("fast", sim.base_url, BAD_KEY)

        async def refused() -> FatalAPIError:
            try:
                resp = await transport.request("POST", "/chat/completions", b"{}")
                raise_for_answer(resp)
            except FatalAPIError as exc:
                return exc
            finally:
                await transport.aclose()
            raise AssertionError("a bad key was accepted")

        exc = anyio.run(refused)
    assert exc.status == 401
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    settings = Settings(spec=spec, out=out, provider="zai").with_key_from_env(
        {"ZAI_API_KEY": h.KEY}
    )
    assert settings.api_key.reveal() == h.KEY
    texts += [repr(settings), str(settings), repr(settings.api_key), str(settings.api_key)]
    texts += [orjson.dumps(settings.to_record(), default=str).decode()]
    texts += [*outputs, orjson.dumps(stats).decode()]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    artifacts = [p for p in files if "artifacts" in p.parts]
    assert len(artifacts) >= 4  # the video, its cover, and a sidecar for each
    assert {p.name for p in files} >= {"checkpoint.sqlite", "results.parquet", "o.jsonl"}
    for p in files:
        data = p.read_bytes()
        for key in (h.KEY, BAD_KEY, POOL_KEY):
            assert key.encode() not in data, p
        if p.suffix == ".parquet":
            texts.append(_strings_of_parquet(p))
    for text in texts:
        for key in (h.KEY, BAD_KEY, POOL_KEY):
            assert key not in text, text[:500]


# -- 5. disk and store faults ------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A small tmpfs at PATH (needs root and mount rights; the test is skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir(parents=True)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True, text=True,
    )  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def remount(path: Path, options: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{options}", str(path)], check=True)


def test_unusable_output_paths_are_exit_2_and_send_nothing(tmp_path: Path) -> None:
    """--out under a regular file (mkdir fails, even for root), and a folder where the
    checkpoint file should be: each exit 2 naming the path, nothing sent; fixed, they run."""
    spec = chat_spec(tmp_path / "spec.jsonl", 5)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder's parent should be")
    folder = tmp_path / "out"
    (folder / "checkpoint.sqlite").mkdir(parents=True)
    with h.SimProcess() as sim:
        r = run_cli(spec, blocker / "out", sim.base_url)
        assert r.returncode == 2
        clean_error(r, "cannot create checkpoint folder", str(blocker))
        r = run_cli(spec, folder, sim.base_url)
        assert r.returncode == 2
        clean_error(r, "cannot open checkpoint", "not a folder")
        assert sum(sim.stats()["requests"].values()) == 0
        blocker.unlink()
        (folder / "checkpoint.sqlite").rmdir()
        assert run_cli(spec, blocker / "out", sim.base_url).returncode == 0
        assert run_cli(spec, folder, sim.base_url).returncode == 0


def test_read_only_output_is_exit_2_untouched_then_resumes(tmp_path: Path) -> None:
    """A job stopped half-way (1113), its folder made read-only: exit 2 naming the cause,
    the checkpoint unchanged; writable again, it resumes and bills each row once."""
    spec = chat_spec(tmp_path / "spec.jsonl", 40)
    with contextlib.ExitStack() as stack:
        if os.geteuid() == 0:  # root ignores modes: use a read-only mount instead
            base = stack.enter_context(tmpfs(tmp_path / "mnt", "8m"))

            def read_only(on: bool) -> None:
                remount(base, "ro" if on else "rw")
        else:
            base = tmp_path

            def read_only(on: bool) -> None:
                for p in [out, *out.iterdir()]:
                    p.chmod((0o555 if p.is_dir() else 0o444) if on else 0o755)

        out = base / "out"
        sim = stack.enter_context(h.SimProcess("--balance-requests", "15"))
        assert run_cli(spec, out, sim.base_url, "--concurrency", "2").returncode == 3
        before = h.read_rows(out)
        assert 0 < len(before) < 40
        sim.configure(balance_requests=None)
        read_only(True)
        try:
            r = run_cli(spec, out, sim.base_url)
            assert r.returncode == 2, r.stderr[-2000:]
            clean_error(r, "read-only")
            assert h.read_rows_ro(out) == before
            assert h.integrity_of_copy(out) == "ok"
        finally:
            read_only(False)
        assert run_cli(spec, out, sim.base_url).returncode == 0
        stats = sim.stats()
        assert stats["billed"]["requests"] == 40 and not stats["duplicates"]["fingerprint"]


def test_status_reads_a_checkpoint_on_read_only_media(tmp_path: Path) -> None:
    """`runner status` on a read-only mount, in the two states a checkpoint is found in:
    as kill -9 left it (a WAL holding the last commits, and its -shm) and as a run that
    ended cleanly left it (no WAL). It must see every committed row and write nothing
    (the mount refuses writes even from root, so a status that tried would fail)."""
    spec = chat_spec(tmp_path / "spec.jsonl", 400)
    with tmpfs(tmp_path / "mnt", "16m") as base, h.SimProcess("--latency", "0.05") as sim:
        out = base / "out"
        proc = subprocess.Popen(
            h.runner_cmd(spec, out, sim.base_url, "--concurrency", "4"),
            env=h.runner_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while h.observe(out).statuses.get("succeeded", 0) < 40:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        finally:
            proc.kill()
            proc.wait()
        assert (out / "checkpoint.sqlite-wal").stat().st_size > 0  # the commits are in it
        killed = sum(r["status"] == "succeeded" for r in h.read_rows_ro(out))
        remount(base, "ro")
        try:
            assert h.status_json(out)["succeeded"] == killed
        finally:
            remount(base, "rw")
        assert run_cli(spec, out, sim.base_url).returncode == 0
        assert not (out / "checkpoint.sqlite-wal").exists()  # folded in at the clean close
        remount(base, "ro")
        try:
            data = h.status_json(out)
            assert (data["succeeded"], data["pending"]) == (400, 0)
        finally:
            remount(base, "rw")


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A job whose disk fills up mid-run, then gets room and is run again (once per module)."""
    base = tmp_path_factory.mktemp("disk-full")
    spec = chat_spec(base / "spec.jsonl", 800)
    with tmpfs(base / "mnt", "320k") as mnt, h.SimProcess("--latency", "0.01") as sim:
        out = mnt / "out"
        first = run_cli(spec, out, sim.base_url, "--concurrency", "8")
        kept = h.observe(out).statuses
        integrity = h.integrity_of_copy(out)
        remount(mnt, "size=64m")
        second = run_cli(spec, out, sim.base_url, "--concurrency", "8")
        stats = sim.stats()
        yield {"first": first, "second": second, "kept": kept, "integrity": integrity,
               "stats": stats, "out": out, "spec": spec}  # fmt: skip


def test_disk_full_mid_run_keeps_the_checkpoint_and_resumes(disk_full: dict[str, Any]) -> None:
    assert disk_full["first"].returncode != 0
    assert "full" in disk_full["first"].stderr
    assert disk_full["integrity"] == "ok"
    assert sum(disk_full["kept"].values()) > 0  # rows committed before the disk filled stay
    assert set(disk_full["kept"]) <= set(h.TERMINAL)
    assert disk_full["second"].returncode == 0, disk_full["second"].stderr[-2000:]
    audit = h.audit(disk_full["out"], disk_full["spec"], disk_full["stats"])
    assert audit.succeeded == 800
    # Answers received but not yet committed when the disk filled were paid for once more.
    assert disk_full["stats"]["billed"]["requests"] == 800 + audit.rebilled_requests


def test_disk_full_mid_run_exits_with_one_clear_error(disk_full: dict[str, Any]) -> None:
    first = disk_full["first"]
    assert first.returncode in (2, 3)
    clean_error(first, "disk is full")


def test_locked_checkpoint_is_exit_2_then_resumes(tmp_path: Path) -> None:
    """Another process holds a write transaction on the checkpoint: exit 2 naming the lock,
    nothing sent; once released, the job resumes and bills each row once."""
    spec = chat_spec(tmp_path / "spec.jsonl", 30)
    out = tmp_path / "out"
    with h.SimProcess("--balance-requests", "10") as sim:
        assert run_cli(spec, out, sim.base_url, "--concurrency", "2").returncode == 3
        sim.configure(balance_requests=None)
        sent = sum(sim.stats()["requests"].values())
        holder = sqlite3.connect(out / "checkpoint.sqlite", isolation_level=None)
        try:
            holder.execute("BEGIN EXCLUSIVE")
            r = run_cli(spec, out, sim.base_url)
            assert r.returncode == 2
            clean_error(r, "database is locked", "another process")
            assert sum(sim.stats()["requests"].values()) == sent
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert h.integrity_of_copy(out) == "ok"
        assert run_cli(spec, out, sim.base_url).returncode == 0
        stats = sim.stats()
    assert stats["billed"]["requests"] == 30 and not stats["duplicates"]["fingerprint"]


@pytest.mark.anyio
async def test_a_brief_lock_mid_run_only_delays_the_writer(tmp_path: Path) -> None:
    """A reader or backup holding the write lock for 1.5 s (under SQLite's 5 s busy wait)
    mid-run: the job carries on and finishes with every row billed once."""
    spec = chat_spec(tmp_path / "spec.jsonl", 600)
    out = tmp_path / "out"

    def hold_lock() -> None:
        while rows_done(out) == 0:
            time.sleep(0.01)
        db = sqlite3.connect(out / "checkpoint.sqlite", isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        time.sleep(1.5)
        db.execute("ROLLBACK")
        db.close()

    async with Simulator(SimConfig(latency=0.01)) as sim:
        settings = Settings(
            spec=spec, out=out, base_url=sim.base_url, api_key=Secret(h.KEY), concurrency=8,
            progress=False, retry=RetryConfig(testing=True),
        )  # fmt: skip
        async with anyio.create_task_group() as tg:
            tg.start_soon(anyio.to_thread.run_sync, hold_lock)
            result = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    assert result.summary["succeeded"] == 600
    assert stats["billed"]["requests"] == 600 and not stats["duplicates"]["fingerprint"]


def test_corrupt_checkpoint_is_exit_2_left_alone_then_moved_away(tmp_path: Path) -> None:
    """Garbage in checkpoint.sqlite: exit 2 saying it is corrupt and what moving it costs;
    the file is not touched; moved away, the job runs again from scratch."""
    spec = chat_spec(tmp_path / "spec.jsonl", 20)
    out = tmp_path / "out"
    with h.SimProcess() as sim:
        assert run_cli(spec, out, sim.base_url).returncode == 0
        for extra in out.glob("checkpoint.sqlite-*"):
            extra.unlink()
        garbage = os.urandom(64 * 1024)
        (out / "checkpoint.sqlite").write_bytes(garbage)
        r = run_cli(spec, out, sim.base_url)
        assert r.returncode == 2
        clean_error(r, "corrupt", "move it", "sent again")
        assert (out / "checkpoint.sqlite").read_bytes() == garbage
        (out / "checkpoint.sqlite").rename(tmp_path / "checkpoint.corrupt")
        assert run_cli(spec, out, sim.base_url).returncode == 0
    assert h.read_rows(out)[-1]["custom_id"] == "c19"


def test_checkpoint_with_damaged_pages_is_exit_2(tmp_path: Path) -> None:
    spec = chat_spec(tmp_path / "spec.jsonl", 60)
    out = tmp_path / "out"
    with h.SimProcess() as sim:
        assert run_cli(spec, out, sim.base_url).returncode == 0
        db = sqlite3.connect(out / "checkpoint.sqlite")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        path = out / "checkpoint.sqlite"
        data = bytearray(path.read_bytes())
        for page in range(2, len(data) // 4096):  # keep page 1 (header and schema) intact
            data[page * 4096 + 100 : page * 4096 + 300] = b"\xa5" * 200
        path.write_bytes(bytes(data))
        r = run_cli(spec, out, sim.base_url)
    assert r.returncode == 2
    clean_error(r, "corrupt")


def test_torn_wal_tail_after_a_kill_is_ignored(tmp_path: Path) -> None:
    """Garbage after the last WAL frame (a torn write) is dropped by SQLite's checksums:
    the resume keeps every committed row and finishes the job."""
    spec = chat_spec(tmp_path / "spec.jsonl", 240)
    out = tmp_path / "out"
    with h.SimProcess("--latency", "0.05") as sim:
        cmd = h.runner_cmd(spec, out, sim.base_url, "--concurrency", "8")
        proc = subprocess.Popen(
            cmd, env=h.runner_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while rows_done(out) < 30 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        committed = {r["custom_id"]: r for r in h.read_rows_ro(out)}
        assert committed
        with (out / "checkpoint.sqlite-wal").open("ab") as f:
            f.write(os.urandom(3 * 4096 + 123))
        r = run_cli(spec, out, sim.base_url, "--concurrency", "32")
        assert r.returncode == 0, r.stderr[-2000:]
        stats = sim.stats()
    audit = h.audit(out, spec, stats)
    assert audit.succeeded == 240
    after = {r["custom_id"]: r for r in h.read_rows(out)}
    assert all(after[cid] == row for cid, row in committed.items())


def test_results_file_that_cannot_be_written_is_exit_2_then_exports(tmp_path: Path) -> None:
    """results.parquet blocked (a folder in its place): one clear error saying the results
    are safe in the checkpoint, no temp file left; unblocked, the next run writes it."""
    spec = chat_spec(tmp_path / "spec.jsonl", 10)
    out = tmp_path / "out"
    (out / "results.parquet").mkdir(parents=True)
    with h.SimProcess() as sim:
        r = run_cli(spec, out, sim.base_url)
        assert r.returncode == 2
        clean_error(r, "results.parquet", "safe in the checkpoint")
        assert not list(out.glob("*.tmp"))
        (out / "results.parquet").rmdir()
        assert run_cli(spec, out, sim.base_url).returncode == 0
        stats = sim.stats()
    assert pq.read_table(out / "results.parquet").num_rows == 10
    assert stats["billed"]["requests"] == 10  # the first run's answers were all kept


def test_a_second_runner_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    rows = [h.chat_line(f"c{i}", f"q {i}") for i in range(150)] + [h.video_line("v0", "a boat")]
    spec = h.write_spec(tmp_path / "spec.jsonl", rows)
    out = tmp_path / "out"
    with h.SimProcess("--latency", "0.05", "--task-seconds", "0.5") as sim:
        cmd = h.runner_cmd(spec, out, sim.base_url, "--concurrency", "8")
        first = subprocess.Popen(
            cmd, env=h.runner_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while rows_done(out) == 0 and first.poll() is None:
            time.sleep(0.01)
        second = run_cli(spec, out, sim.base_url, "--concurrency", "8")
        first.wait(timeout=60)
        stats = sim.stats()
    assert not stats["duplicates"]["request_id"]
    assert not stats["duplicates"]["fingerprint"]
    assert second.returncode == 2
