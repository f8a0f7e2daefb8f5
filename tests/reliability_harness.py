"""Crash-recovery harness: real `runner` processes, SIGKILLed at chosen moments, then audited.

Shared by `tests/test_reliability.py` (a short loop in CI) and `bench/soak.py` (`make soak`,
100+ kills). Everything runs as it would for a user: the simulator is its own process
(`python -m runner.sim`), each run is `python -m runner run SPEC --out DIR ...` with the key
in the environment, and the audit reads only what a user could read afterwards: the
checkpoint, results.parquet, `runner status --json`, the artifact files and the simulator's
ledger (`GET /_sim/stats`). Nothing here imports the runner's internals except the price
table, which the audit uses to recompute each row's cost independently of the pool.

Kill moments (`PHASES`) are chosen by watching the live checkpoint from outside:

- ``startup``: a random moment around the process's start (imports, spec fingerprint and
  row count, checkpoint open, resume preparation), calibrated on the first run;
- ``pool``: some time after this run's first committed result, while chat rows stream;
- ``commit``: the instant the WAL file grows, i.e. during or right after a commit;
- ``submit``: the instant a row is 'submitting' (an async submit is on the wire);
- ``poll``: some time while tasks are 'submitted' and being polled;
- ``download``: the instant a new file appears under artifacts/ (mid-download or sidecar).

A trigger that can no longer happen (no video left to submit) falls back to a random kill
after a short wait; every kill records the states actually seen the moment before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
from simproc import SimProcess

from jobs import write_spec

ROOT = Path(__file__).resolve().parents[1]
KEY = "reliability-key-5c1e0b7d.DO-NOT-LEAK"
CHAT_MODEL = "glm-4.5-air"
VIDEO_MODEL = "cogvideox-3"
ASYNC = ("videos/generations", "async/images/generations", "async/chat/completions")
TERMINAL = ("succeeded", "failed")
PHASES = ("startup", "pool", "commit", "submit", "poll", "download")


# -- the simulator as a process -------------------------------------------------------------


# -- specs ------------------------------------------------------------------------------------


def chat_line(cid: str, text: str, *, model: str = CHAT_MODEL) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 64}
    return {"custom_id": cid, "method": "POST", "url": "/v4/chat/completions", "body": body}


def video_line(cid: str, prompt: str) -> dict[str, Any]:
    body = {"model": VIDEO_MODEL, "prompt": prompt}
    return {"custom_id": cid, "method": "POST", "url": "/v4/videos/generations", "body": body}


def mixed_spec(path: Path, n_chat: int, n_video: int, *, seed: int = 0) -> Path:
    """Chat and video rows interleaved, a few row errors, failing tasks and malformed lines.

    So every terminal path is exercised under kills: success, a platform row error (1301),
    a task that ends FAIL, and a line the reader rejects (`invalid_row`).
    """
    rng = random.Random(seed)
    lines: list[dict[str, Any] | bytes] = []
    videos = 0
    for i in range(n_chat):
        marker = " [[sim:1301]]" if i % 97 == 13 else ""
        lines.append(chat_line(f"chat-{i}", f"crash row {i} seed {seed}{marker}"))
        if videos < n_video and rng.random() < n_video / max(n_chat, 1) * 1.5:
            fail = " [[sim:task-fail]]" if videos % 9 == 4 else ""
            lines.append(video_line(f"vid-{videos}", f"clip {videos} seed {seed}{fail}"))
            videos += 1
        if i in (n_chat // 3, 2 * n_chat // 3):
            lines.append(b'{"custom_id": "broken-' + str(i).encode() + b'", "body": ')
    while videos < n_video:
        lines.append(video_line(f"vid-{videos}", f"clip {videos} seed {seed}"))
        videos += 1
    return write_spec(path, lines)


def runner_cmd(spec: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
        "--base-url", base_url, "--no-progress", *extra,
    ]  # fmt: skip


def runner_env(key: str = KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    return {**env, "ZAI_API_KEY": key}


# -- watching a live checkpoint from outside --------------------------------------------------


@dataclass
class Seen:
    """What the output folder showed at one instant."""

    statuses: dict[str, int] = field(default_factory=dict)
    runs: int = 0
    wal: tuple[int, int] = (0, 0)  # size, mtime_ns of checkpoint.sqlite-wal
    artifacts: int = 0
    parts: int = 0
    tasks_left: int | None = None  # async rows of the spec without a final result

    def label(self) -> list[str]:
        flags = []
        if self.statuses.get("submitting"):
            flags.append("submitting")
        if self.statuses.get("submitted"):
            flags.append("submitted")
        if self.parts:
            flags.append("downloading")
        return flags


def observe(out: Path, n_async: int | None = None) -> Seen:
    """What OUT shows now; `n_async` (the spec's async rows) asks for `tasks_left` too."""
    seen = Seen(tasks_left=n_async)
    db_path = out / "checkpoint.sqlite"
    wal = out / "checkpoint.sqlite-wal"
    try:
        st = wal.stat()
        seen.wal = (st.st_size, st.st_mtime_ns)
    except OSError:
        pass
    art = out / "artifacts"
    try:
        names = os.listdir(art)
        seen.parts = sum(n.endswith(".part") for n in names)
        seen.artifacts = len(names) - seen.parts
    except OSError:
        pass
    if not db_path.exists():
        return seen
    try:
        db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=0.2)
        try:
            seen.statuses = dict(db.execute("SELECT status, COUNT(*) FROM rows GROUP BY status"))
            seen.runs = int(db.execute("SELECT COUNT(*) FROM runs").fetchone()[0])
            if n_async is not None:
                marks = ", ".join("?" * len(ASYNC))
                settled = db.execute(
                    f"SELECT COUNT(*) FROM rows WHERE endpoint IN ({marks}) "
                    "AND status IN ('succeeded', 'failed')",
                    ASYNC,
                ).fetchone()[0]
                seen.tasks_left = n_async - int(settled)
        finally:
            db.close()
    except sqlite3.Error:
        pass
    return seen


def integrity_of_copy(out: Path) -> str:
    """PRAGMA integrity_check on a copy of the checkpoint (with its WAL) as a kill left it.

    A copy, so the check neither checkpoints the WAL nor changes what the next run recovers.
    """
    src = out / "checkpoint.sqlite"
    if not src.exists():
        return "absent"
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal", "-shm"):
            f = out / f"checkpoint.sqlite{suffix}"
            if f.exists():
                shutil.copyfile(f, Path(tmp) / f.name)
        db = sqlite3.connect(Path(tmp) / "checkpoint.sqlite")
        try:
            return str(db.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            db.close()


# -- the kill loop ----------------------------------------------------------------------------


@dataclass
class Kill:
    phase: str  # the trigger that was armed
    after_s: float  # seconds since the process started
    flags: list[str]  # states seen the instant before the kill
    registered: bool  # whether this run had recorded itself in `runs` yet
    integrity: str  # PRAGMA integrity_check of the checkpoint the kill left


@dataclass
class CrashRun:
    out: Path
    spec: Path
    kills: list[Kill]
    runs: int
    final_rc: int
    stats: dict[str, Any]
    seconds: float
    logs: list[Path]

    def phases(self) -> Counter[str]:
        return Counter(k.phase for k in self.kills)

    def flags(self) -> Counter[str]:
        c: Counter[str] = Counter(f for k in self.kills for f in k.flags)
        c["before the run registered"] = sum(not k.registered for k in self.kills)
        return c


class _Watch:
    """Observes one run's folder; notes when the run first shows up in the `runs` table."""

    def __init__(self, out: Path, before: Seen, t0: float, n_async: int) -> None:
        self.out, self.before, self.t0, self.n_async = out, before, t0, n_async
        self.registered_after: float | None = None

    def __call__(self) -> Seen:
        seen = observe(self.out, self.n_async)
        if self.registered_after is None and seen.runs > self.before.runs:
            self.registered_after = time.monotonic() - self.t0
        return seen


def _wait_for(
    proc: subprocess.Popen[bytes], watch: _Watch, phase: str, rng: random.Random,
    startup_s: float,
) -> Seen:  # fmt: skip
    """Block until the phase's moment (or the process ends); return what was last seen."""
    before = seen = watch.before
    if phase == "startup":
        # Around the moment the run registers: imports, spec fingerprint, checkpoint open.
        target = watch.t0 + rng.uniform(0.4, 1.2) * startup_s
        while proc.poll() is None and time.monotonic() < target:
            seen = watch()
            time.sleep(0.003)
        return seen
    if phase in ("submit", "poll", "download") and before.tasks_left == 0:
        phase = "pool"  # every task is settled: nothing of that kind can happen any more
    limit = time.monotonic() + 6.0
    delay = 0.0
    wal_base: tuple[int, int] | None = None
    while proc.poll() is None and time.monotonic() < limit:
        seen = watch()
        done_now = sum(seen.statuses.get(s, 0) for s in TERMINAL)
        done_before = sum(before.statuses.get(s, 0) for s in TERMINAL)
        if phase == "pool" and seen.runs > before.runs and done_now > done_before:
            delay = rng.uniform(0.0, 0.3)
            break
        if phase == "commit" and done_now > done_before:
            # This run has committed results; kill the instant the WAL grows again.
            if wal_base is None:
                wal_base = seen.wal
            elif seen.wal != wal_base:
                delay = rng.uniform(0.0, 0.004)
                break
        if phase == "submit" and seen.runs > before.runs and seen.statuses.get("submitting"):
            break
        if phase == "poll" and seen.statuses.get("submitted") and seen.runs > before.runs:
            delay = rng.uniform(0.0, 0.6)
            break
        if phase == "download" and (seen.parts or seen.artifacts > before.artifacts):
            break
        time.sleep(0.003)
    else:
        # The moment never came (nothing of that kind left): kill at a random moment instead.
        delay = rng.uniform(0.0, 0.3)
    if delay:
        end = time.monotonic() + delay
        while proc.poll() is None and time.monotonic() < end:
            seen = watch()
            time.sleep(0.005)
    return seen


def crash_loop(
    workdir: Path,
    *,
    kills: int,
    n_chat: int = 700,
    n_video: int = 24,
    seed: int = 0,
    concurrency: int = 4,
    final_concurrency: int = 32,
    sim_args: tuple[str, ...] = (),
    budget_s: float = 150.0,
) -> CrashRun:
    """Run one job to the end through `kills` SIGKILLs at chosen moments; return the record.

    The simulator serves tasks that take 1 s and requests that take 50 ms, so a run spends
    its time streaming chat rows, submitting and polling videos, and downloading their files.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    spec = mixed_spec(workdir / "spec.jsonl", n_chat, n_video, seed=seed)
    out = workdir / "out"
    rng = random.Random(seed)
    plan = [PHASES[i % len(PHASES)] for i in range(kills)]
    rng.shuffle(plan)
    env = runner_env()
    started = time.monotonic()
    record: list[Kill] = []
    logs: list[Path] = []
    startup_s, calibrated = 0.8, False
    args = ("--latency", "0.05", "--task-seconds", "1", "--seed", str(seed), *sim_args)
    with SimProcess(*args) as sim:
        cmd = runner_cmd(spec, out, sim.base_url, "--concurrency", str(concurrency))
        runs = 0
        while True:
            if time.monotonic() - started > budget_s:
                raise AssertionError(f"job not done after {budget_s:.0f}s and {len(record)} kills")
            log = workdir / f"run-{runs}.log"
            logs.append(log)
            before = observe(out, n_video)
            t0 = time.monotonic()
            watch = _Watch(out, before, t0, n_video)
            if len(record) >= kills:  # the last run: finish quickly (the cap may change)
                cmd = runner_cmd(spec, out, sim.base_url, "--concurrency", str(final_concurrency))
            with log.open("wb") as sink:
                proc = subprocess.Popen(cmd, env=env, stdout=sink, stderr=sink, cwd=ROOT)
            runs += 1
            if len(record) < kills:
                phase = plan[len(record)]
                seen = _wait_for(proc, watch, phase, rng, startup_s)
                if watch.registered_after is not None and not calibrated:
                    startup_s, calibrated = watch.registered_after, True
                if proc.poll() is None:
                    os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
                    record.append(
                        Kill(
                            phase,
                            round(time.monotonic() - t0, 3),
                            seen.label(),
                            seen.runs > before.runs,
                            integrity_of_copy(out),
                        )
                    )
                    continue
            rc = proc.wait(timeout=max(10.0, budget_s - (time.monotonic() - started)))
            if rc in (0, 1):
                break
            raise AssertionError(f"run {runs} exited {rc}: {log.read_text()[-2000:]}")
        stats = sim.stats()
    return CrashRun(out, spec, record, runs, rc, stats, round(time.monotonic() - started, 2), logs)


# -- the audit --------------------------------------------------------------------------------


def sim_fingerprint(endpoint: str, body: dict[str, Any]) -> str:
    """The simulator ledger's key for one request body (request_id excluded), as it computes it."""
    body = {k: v for k, v in body.items() if k != "request_id"}
    canon = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(endpoint.encode() + b"\n" + canon).hexdigest()[:16]


def read_rows(out: Path) -> list[dict[str, Any]]:
    db = sqlite3.connect(out / "checkpoint.sqlite")
    db.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in db.execute("SELECT * FROM rows ORDER BY seq")]
    finally:
        db.close()


def status_json(out: Path) -> dict[str, Any]:
    r = subprocess.run(
        [sys.executable, "-m", "runner", "status", str(out), "--json"],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=runner_env(),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return dict(json.loads(r.stdout))


def spec_lines(spec: Path) -> list[bytes]:
    return [ln for ln in spec.read_bytes().splitlines() if ln.strip()]


@dataclass
class Audit:
    rows: int
    succeeded: int
    failed: int
    invalid: int
    submit_unknown: int
    unknown_accepted: int  # submit_unknown rows the platform had in fact accepted (and billed)
    tasks: int
    task_submissions: int
    duplicate_task_submissions: int
    rebilled_sync_rows: int
    rebilled_requests: int
    cost_nano: int
    integrity: str
    parquet_rows: int
    errors: dict[str, int]


def _usage_cost(prices: Any, row: dict[str, Any]) -> int | None:
    from runner.cost import Usage

    if row["model"] is None:
        return None
    fields = ("prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens")
    u = Usage(*(int(row[f] or 0) for f in fields), int(row["images"] or 0),
              int(row["videos"] or 0))  # fmt: skip
    return prices.cost(row["model"], u)


def audit(out: Path, spec: Path, stats: dict[str, Any]) -> Audit:
    """Check the end state of a job against its spec and the platform's ledger.

    Raises AssertionError naming the first broken promise; returns the figures otherwise.
    """
    import pyarrow.parquet as pq

    from runner.cost import load_prices

    lines = spec_lines(spec)
    rows = read_rows(out)
    # Every spec row has exactly one terminal result, at its own position.
    assert [r["seq"] for r in rows] == list(range(len(lines))), "rows missing or extra"
    bad = [(r["custom_id"], r["status"]) for r in rows if r["status"] not in TERMINAL]
    assert not bad, f"rows not terminal: {bad[:5]}"
    real = [r["custom_id"] for r in rows if r["error_code"] != "invalid_row"]
    assert len(real) == len(set(real)), "a custom_id was recorded twice"
    db = sqlite3.connect(out / "checkpoint.sqlite")
    try:
        integrity = str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()
    assert integrity == "ok", integrity
    # results.parquet is the checkpoint, row for row.
    table = pq.read_table(out / "results.parquet", columns=["custom_id", "status", "cost_nano"])
    assert table.num_rows == len(rows)
    assert table.column("custom_id").to_pylist() == [r["custom_id"] for r in rows]
    assert table.column("status").to_pylist() == [r["status"] for r in rows]
    assert table.column("cost_nano").to_pylist() == [r["cost_nano"] for r in rows]
    # Each row's cost is its own recorded usage priced from the shipped table.
    prices = load_prices("zai")
    for r in rows:
        has_usage = any(
            r[f] is not None for f in ("prompt_tokens", "completion_tokens", "images", "videos")
        )
        expected = _usage_cost(prices, r) if has_usage else None
        assert r["cost_nano"] == expected, (r["custom_id"], r["cost_nano"], expected)
    total = sum(r["cost_nano"] or 0 for r in rows)
    status = status_json(out)
    assert Decimal(status["cost"]["total_exact"]) == Decimal(total) / 10**9, status["cost"]
    assert (status["total"], status["pending"], status["in_progress"]) == (len(rows), 0, 0)
    assert status["succeeded"] + status["failed"] == len(rows)
    # Async tasks: accepted by the platform at most once, exactly once unless submit_unknown.
    by_rid: dict[str, int] = stats["submissions_by_request_id"]
    tasks = [r for r in rows if r["endpoint"] in ASYNC]
    for r in tasks:
        n = by_rid.get(r["request_id"] or "", 0)
        if r["error_code"] == "submit_unknown":
            assert n <= 1, (r["custom_id"], n)
        else:
            assert n == 1, (r["custom_id"], r["status"], r["error_code"], n)
    assert not stats["duplicates"]["request_id"], stats["duplicates"]["request_id"]
    task_submissions = sum(by_rid.get(r["request_id"] or "", 0) for r in tasks)
    assert stats["tasks"]["submitted"] == task_submissions
    duplicate_tasks = sum(max(0, by_rid.get(r["request_id"] or "", 0) - 1) for r in tasks)
    # Sync rows: the platform billed each body as often as it accepted it; every extra
    # acceptance is an answer lost with a killed process (or a stall the runner gave up on).
    by_fp: dict[str, int] = stats["submissions_by_fingerprint"]
    rebilled_rows = rebilled = 0
    bodies = {
        r["seq"]: orjson.loads(lines[r["seq"]]) for r in rows if r["error_code"] != "invalid_row"
    }
    for r in rows:
        if r["endpoint"] in ASYNC or r["error_code"] == "invalid_row":
            continue
        n = by_fp.get(sim_fingerprint(r["endpoint"], bodies[r["seq"]]["body"]), 0)
        if r["status"] == "succeeded":
            assert n >= 1, (r["custom_id"], "succeeded but the platform never answered it")
        rebilled += max(0, n - 1)
        rebilled_rows += n > 1

    # The platform's token bill for the chat model equals the checkpoint's, counted once per
    # acceptance of each body (answers are deterministic, so a lost answer repeats its usage).
    # Only checkable when every body the platform accepted has its usage in the checkpoint.
    def accepted(r: dict[str, Any]) -> int:
        return by_fp.get(sim_fingerprint(r["endpoint"], bodies[r["seq"]]["body"]), 0)

    chat = [r for r in rows if r["endpoint"] == "chat/completions"]
    if all(r["prompt_tokens"] is not None or accepted(r) == 0 for r in chat):
        billed = stats["billed"]["by_model"].get(CHAT_MODEL, {})
        for name in ("prompt_tokens", "completion_tokens"):
            expect = sum((r[name] or 0) * accepted(r) for r in chat)
            assert billed.get(name, 0) == expect, (name, billed, expect)
    errors = Counter(r["error_code"] for r in rows if r["status"] == "failed")
    return Audit(
        rows=len(rows),
        succeeded=sum(r["status"] == "succeeded" for r in rows),
        failed=sum(r["status"] == "failed" for r in rows),
        invalid=errors.get("invalid_row", 0),
        submit_unknown=errors.get("submit_unknown", 0),
        unknown_accepted=sum(
            by_rid.get(r["request_id"] or "", 0)
            for r in tasks
            if r["error_code"] == "submit_unknown"
        ),
        tasks=len(tasks),
        task_submissions=task_submissions,
        duplicate_task_submissions=duplicate_tasks,
        rebilled_sync_rows=rebilled_rows,
        rebilled_requests=rebilled,
        cost_nano=total,
        integrity=integrity,
        parquet_rows=table.num_rows,
        errors=dict(errors),
    )


def check_artifacts(out: Path, rows: list[dict[str, Any]]) -> int:
    """Every succeeded video's files are whole (sha256 as recorded); no temp file is left."""
    n = 0
    for r in rows:
        if r["endpoint"] != "videos/generations" or r["status"] != "succeeded":
            continue
        for rec in orjson.loads(r["artifacts"]):
            data = (out / rec["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == rec["sha256"], rec["path"]
            assert (out / (rec["path"] + ".json")).exists(), rec["path"]
            n += 1
    leftovers = (
        [p.name for p in (out / "artifacts").glob(".*")] if (out / "artifacts").exists() else []
    )
    assert not leftovers, leftovers
    return n


# -- hostile specs (hypothesis) ---------------------------------------------------------------


@dataclass
class Line:
    """One physical line of a generated spec and what the job must make of it."""

    raw: bytes
    valid: bool | None  # True: must succeed; False: must fail as invalid_row; None: blank


def hostile_lines() -> Any:
    """A hypothesis strategy for whole spec files: valid chat rows (batch and short form)
    mixed with malformed lines of every kind the reader rejects, blank lines and CRLFs.

    Unlike tests/test_spec_hypothesis.py, which checks the reader's items, these files go
    through a whole job: only shapes whose outcome is certain are drawn, so that every valid
    row must end 'succeeded' and every bad one 'failed' with error_code 'invalid_row'.
    """
    from hypothesis import strategies as st

    # Prompt text: any unicode without the simulator's fault markers, never blank.
    prompt = st.text(min_size=1, max_size=40).filter(lambda t: "[[sim:" not in t and t.strip())
    hostile_id = st.sampled_from(["../../etc/passwd", "a/b", "", " ", "视频", "x" * 240, "\u202e"])

    def chat(cid: Any, text: str, **extra: Any) -> dict[str, Any]:
        body = {"model": CHAT_MODEL, "messages": [{"role": "user", "content": text}], **extra}
        return {"custom_id": cid, "url": "/v4/chat/completions", "body": body}

    wrong = st.sampled_from(
        [
            ("custom_id", 12.5), ("custom_id", True), ("custom_id", ["a"]),
            ("custom_id", "x" * 300),
            ("url", 7), ("url", "/v4/not-an-endpoint"), ("method", "GET"), ("method", 1),
            ("body", [1, 2]), ("body", "text"), ("body", 3),
            ("body.model", 5), ("body.model", ""), ("body.messages", []),
            ("body.messages", "hi"), ("body.max_tokens", 0), ("body.max_tokens", True),
            ("body.temperature", "hot"), ("body.stream", True),
        ]
    )  # fmt: skip

    @st.composite
    def entry(draw: Any, n: int) -> list[Line]:
        kind = draw(st.sampled_from(
            ["batch", "batch", "short", "odd_id", "truncated", "not_object", "not_utf8",
             "wrong", "no_body", "dup", "blank", "nul"]
        ))  # fmt: skip
        cid = f"id-{n}"
        text = draw(prompt)
        if kind == "batch":
            return [Line(orjson.dumps(chat(cid, text)), True)]
        if kind == "short":  # endpoint and model come from the job's defaults
            short = {"messages": [{"role": "user", "content": text}]}
            return [Line(orjson.dumps(short), True)]
        if kind == "odd_id":  # hostile but legal custom_ids (unique per line)
            odd = draw(hostile_id) + f"#{n}"
            return [Line(orjson.dumps(chat(odd, text)), True)]
        if kind == "truncated":
            full = orjson.dumps(chat(cid, text))
            return [Line(full[: draw(st.integers(1, len(full) - 1))], False)]
        if kind == "not_object":
            value = draw(st.sampled_from([b"[]", b"3", b'"row"', b"null", b"true", b"[{}]"]))
            return [Line(value, False)]
        if kind == "not_utf8":
            raw = orjson.dumps(chat(cid, "@@"))
            return [
                Line(raw.replace(b"@@", draw(st.sampled_from([b"\xff", b"\xc3(", b"\x80"]))), False)
            ]
        if kind == "wrong":
            name, value = draw(wrong)
            row: dict[str, Any] = chat(cid, text)
            if name.startswith("body."):
                row["body"][name[5:]] = value
            else:
                row[name] = value
            return [Line(orjson.dumps(row), False)]
        if kind == "no_body":
            return [Line(orjson.dumps({"custom_id": cid, "url": "/v4/chat/completions"}), False)]
        if kind == "dup":  # the second use of a custom_id is the bad one
            again = chat(cid, draw(prompt))
            return [Line(orjson.dumps(chat(cid, text)), True), Line(orjson.dumps(again), False)]
        if kind == "nul":
            return [Line(b"\x00" * draw(st.integers(1, 8)), False)]
        return [Line(draw(st.sampled_from([b"", b"   ", b"\t", b"\r"])), None)]

    @st.composite
    def files(draw: Any) -> tuple[bytes, list[Line]]:
        lines = [x for n in range(draw(st.integers(1, 14))) for x in draw(entry(n))]
        ends = [draw(st.sampled_from([b"\n", b"\r\n"])) for _ in lines]
        return b"".join(ln.raw + end for ln, end in zip(lines, ends, strict=True)), lines

    return files()


def check_hostile(rows: list[dict[str, Any]], lines: list[Line]) -> tuple[int, int]:
    """Every bad line failed as invalid_row naming its line; every valid row succeeded.

    Returns (valid rows, bad rows)."""
    import re

    expected = [(number, ln) for number, ln in enumerate(lines, 1) if ln.valid is not None]
    assert [r["line"] for r in rows] == [number for number, _ in expected], "lines misnumbered"
    good = bad = 0
    for r, (number, ln) in zip(rows, expected, strict=True):
        if ln.valid:
            assert r["status"] == "succeeded", (number, ln.raw[:80], r["error_message"])
            good += 1
        else:
            assert r["status"] == "failed" and r["error_code"] == "invalid_row", (number, r)
            assert re.search(rf"\bline {number}\b", r["error_message"]), r["error_message"]
            bad += 1
    return good, bad


# -- a fault storm, in process ----------------------------------------------------------------

STORM = {"rate_429": 0.3, "rate_500": 0.05, "rate_503": 0.05, "rate_drop": 0.02,
         "rate_stall": 0.02}  # fmt: skip


@dataclass
class Storm:
    exit_code: int
    rows: list[dict[str, Any]]
    faults: dict[str, int]
    cap: int
    storm_s: float  # how long the storm blew
    storm_in_flight: float  # the runner's requests in flight, mean over the storm's end
    platform_storm_in_flight: float  # the same window as the platform counts it
    recovered_after: float | None  # seconds from the storm's end to a 1 s mean >= 75 % of cap
    calm_in_flight: float  # the runner's requests in flight over the second after that
    per_second: list[float]  # the runner's in flight, mean per second of the job
    seconds: float


async def storm(
    workdir: Path, *, rows: int = 4000, cap: int = 32, storm_s: float = 4.0,
    window: float = 1.5, seed: int = 1,
) -> Storm:  # fmt: skip
    """Run a chat job through `storm_s` of storm (30 % 429, 5 % 500, 5 % 503, 2 % drops,
    2 % stalls of 2 s against the runner's 1 s timeout), then calm; sample in flight every
    20 ms throughout.

    In flight is the platform's count less the stalled requests the runner has already
    given up on (a stall started between 2.05 s and 1 s ago): those still hold a slot on
    the platform, but not in the runner, and the runner's concurrency is what is measured.
    How fast the pool grows back is the limiter's business (limits.py), so the calm figure
    is taken once it has regrown, however long that took, not at a fixed time.
    """
    import bisect
    import statistics
    from dataclasses import replace as dc_replace

    import anyio

    from runner import RetryConfig, Settings, run_job
    from runner.settings import Secret
    from runner.sim import SimConfig, Simulator

    workdir.mkdir(parents=True, exist_ok=True)
    spec = write_spec(
        workdir / "spec.jsonl", (chat_line(f"s-{i}", f"storm row {i}") for i in range(rows))
    )
    latency, stall = 0.05, 2.0
    cfg = SimConfig(latency=latency, stall_seconds=stall, seed=seed, ledger_ids=False)
    samples: list[tuple[float, int, int]] = []  # (time, platform in flight, stalls so far)
    async with Simulator(dc_replace(cfg, **STORM)) as sim:
        settings = Settings(
            spec=spec, out=workdir / "out", base_url=sim.base_url, api_key=Secret(KEY),
            concurrency=cap, progress=False, request_timeout=1.0,
            retry=RetryConfig(testing=True),
        )  # fmt: skip
        t0 = time.monotonic()
        calm_at = t0 + storm_s

        async def sample() -> None:
            while True:
                st = sim.stats()
                samples.append((time.monotonic(), st["in_flight"], st["faults"]["stall"]))
                await anyio.sleep(0.02)

        async def calm() -> None:
            await anyio.sleep(storm_s)
            sim.update(**dict.fromkeys(STORM, 0.0))

        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            tg.start_soon(calm)
            result = await run_job(settings, handle_signals=False)
            end = time.monotonic()
            tg.cancel_scope.cancel()
        faults = {k: v for k, v in sim.stats()["faults"].items() if v}

    times = [t for t, _, _ in samples]

    def stalls_by(t: float) -> int:
        i = bisect.bisect_right(times, t) - 1
        return samples[i][2] if i >= 0 else 0

    runner_view = [
        (t, n - (stalls_by(t - 1.0) - stalls_by(t - stall - latency))) for t, n, _ in samples
    ]

    def mean(a: float, b: float, view: list[tuple[float, int]] = runner_view) -> float:
        got = [n for t, n in view if a <= t < b]
        assert len(got) >= 10, f"too few samples in [{a - t0:.1f}, {b - t0:.1f}] s"
        return statistics.mean(got)

    # Recovered: the first moment after the storm whose trailing second averages 75 % of
    # the cap. The calm figure is the second after it (the job must still be running).
    recovered: float | None = None
    for t, _ in runner_view:
        if t >= calm_at + 1.0 and mean(t - 1.0, t) >= 0.75 * cap:
            recovered = t
            break
    assert recovered is not None and end - recovered > 1.0, (
        "the pool did not regrow before the job ended: give the storm job more rows"
    )
    platform = [(t, n) for t, n, _ in samples]
    return Storm(
        exit_code=result.exit_code,
        rows=read_rows(workdir / "out"),
        faults=faults,
        cap=cap,
        storm_s=storm_s,
        storm_in_flight=mean(calm_at - window, calm_at),
        platform_storm_in_flight=mean(calm_at - window, calm_at, platform),
        recovered_after=round(recovered - calm_at, 2),
        calm_in_flight=mean(recovered, recovered + 1.0),
        per_second=[
            round(
                statistics.mean([n for t, n in runner_view if t0 + i <= t < t0 + i + 1] or [0]), 1
            )
            for i in range(int(end - t0) + 1)
        ],
        seconds=round(end - t0, 2),
    )


def read_rows_ro(out: Path) -> list[dict[str, Any]]:
    """The rows as a killed run left them, read without recovering or checkpointing the WAL."""
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in ("", "-wal", "-shm"):
            f = out / f"checkpoint.sqlite{suffix}"
            if f.exists():
                shutil.copyfile(f, Path(tmp) / f.name)
        return read_rows(Path(tmp))
