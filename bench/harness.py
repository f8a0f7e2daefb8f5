"""The measuring machinery: child processes, the timed simulator, specs and one run.

Kept apart from the modes in ``run_bench.py`` and the tables in ``report.py``, and kept
lean on purpose: Linux carries a process's peak RSS across ``fork`` and ``exec``, so a
child's ``ru_maxrss`` is never below this process's own peak. Peak RSS is therefore read
from the child's ``VmHWM`` (which starts afresh at ``exec``) every time it is polled
(20 ms), with ``ru_maxrss`` as the fallback; and nothing heavy (pyarrow, matplotlib, whole
log files) is loaded here before the last child has run - the runner's results.parquet is
read by a short-lived helper process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PEERS = BENCH / "peers"
WORK = BENCH / "out"
CURATOR_PY = BENCH / ".venv-curator" / "bin" / "python"
API_KEY = "bench.key"
MODEL = "glm-4.5-air"
# `--models K` spreads the rows over the first K of these, round robin: C applies per model
# (the simulator's limit is per key and model, as the platform's tier is), so K x C are in
# flight.
MODELS = (MODEL, "glm-4.7-flash", "glm-4.6", "glm-4.5-flash")

# (concurrency C, latency L) of the default run; N rows = 10,000 at C=500, 3,000 at C=50.
SCENARIOS = [(50, 0.2), (500, 0.2), (50, 1.0), (500, 1.0), (500, 0.5)]
PEER_NAMES = ["aiohttp", "cookbook", "openai", "litellm", "curator"]
TOOL_LABELS = {
    "runner": "runner (ours: checkpoint, retries, cost)",
    "aiohttp": "bare aiohttp loop",
    "cookbook": "cookbook-style processor",
    "openai": "AsyncOpenAI default + Semaphore",
    "litellm": "LiteLLM acompletion + Semaphore",
    "curator": "Bespoke Curator (online)",
    "generate": "runner generate (ours: + JSON schema check, typed columns; cache off)",
}
# Not a peer: `runner generate` on the same engine, measured beside `runner run` when asked
# for (`--peers generate`); its argv is built by `tool_argv`, not from a script.
OWN_TOOLS = ("generate",)
PEER_SCRIPTS = {
    "aiohttp": "aiohttp_loop.py",
    "cookbook": "cookbook.py",
    "openai": "openai_sdk.py",
    "litellm": "litellm_acompletion.py",
    "curator": "curator_online.py",
}


_children: dict[int, subprocess.Popen[bytes]] = {}
# Extra environment for every child: PYTHONPATH when --runner-ref/--runner-src picks the
# runner (and simulator) source to measure instead of the working tree.
_child_env: dict[str, str] = {}


def _kill_children() -> None:
    """Kill every child still running (each leads its own process group)."""
    for pid, proc in list(_children.items()):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
        _children.pop(pid, None)


def _on_signal(signum: int, frame: Any) -> None:
    _kill_children()
    raise SystemExit(128 + signum)


def _pin(core: int | None, no_pin: bool) -> list[str]:
    if core is None or no_pin or shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return []
    return ["taskset", "-c", str(core)]


@dataclass
class Finished:
    """How a child process ended and what it used (from wait4)."""

    rc: int | None
    wall_s: float
    cpu_s: float
    maxrss_mb: float
    timed_out: bool
    stdout: str
    stderr: str


class Child:
    """One child process in its own session, timed and reaped with ``wait4``."""

    def __init__(self, argv: list[str], *, log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        self.out_path = log.with_suffix(".out")
        self.err_path = log.with_suffix(".err")
        self._out = self.out_path.open("wb")
        self._err = self.err_path.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=WORK,  # not ROOT: the cwd would shadow a --runner-src tree on sys.path
            env={**os.environ, **_child_env, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            start_new_session=True,
        )
        _children[self.proc.pid] = self.proc
        self.result: Finished | None = None
        self.hwm_kb = 0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def signal(self, signum: int) -> None:
        if self.result is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def poll(self) -> Finished | None:
        if self.result is not None:
            return self.result
        self.hwm_kb = max(self.hwm_kb, _vm_hwm_kb(self.pid))
        pid, status, usage = os.wait4(self.pid, os.WNOHANG)
        if pid == 0:
            return None
        return self._reaped(status, usage, timed_out=False)

    def wait(self, timeout: float, interval: float = 0.02) -> Finished:
        deadline = time.monotonic() + timeout
        while True:
            done = self.poll()
            if done is not None:
                return done
            if time.monotonic() >= deadline:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                _, status, usage = os.wait4(self.pid, 0)
                return self._reaped(status, usage, timed_out=True)
            time.sleep(interval)

    def _reaped(self, status: int, usage: Any, *, timed_out: bool) -> Finished:
        wall = time.monotonic() - self.started
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        _children.pop(self.pid, None)
        # Reap anything the child left in its session (uvicorn workers, curator helpers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._out.close()
        self._err.close()
        self.result = Finished(
            rc=self.proc.returncode,
            wall_s=wall,
            cpu_s=usage.ru_utime + usage.ru_stime,
            # ru_maxrss (kB) is floored by this process's own peak (see the module doc);
            # VmHWM, sampled while polling, is the exec'd program's alone.
            maxrss_mb=(self.hwm_kb or usage.ru_maxrss) / 1024,
            timed_out=timed_out,
            stdout=_tail(self.out_path),
            stderr=_tail(self.err_path),
        )
        return self.result


def _vm_hwm_kb(pid: int) -> int:
    """Peak RSS of the program now running as pid (since its exec), from /proc; 0 if gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _tail(path: Path, size: int = 65536) -> str:
    """The end of a log: whole logs (Curator's progress bars) would bloat this process."""
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - size))
        return f.read().decode(errors="replace")


def serve_timed_sim(argv: list[str]) -> None:
    """``harness.py _sim ARGS``: ``python -m runner.sim ARGS`` plus the bench's timestamps.

    The ledger gains the wall-clock time of the first API request received and of the last
    one finished, and status counts per second since the first: the server's own window,
    which no client-side clock can give. One ``time.time()`` per request; if the ledger's
    methods change shape the patch is skipped and the harness falls back to client clocks.
    """
    from runner.sim import ledger as ledger_mod
    from runner.sim.cli import sim_command

    cls = ledger_mod.Ledger
    try:
        reset, received, finished, snapshot = cls.reset, cls.received, cls.finished, cls.snapshot
    except AttributeError:
        sim_command(args=argv, prog_name="runner sim")
        return

    def bench_reset(self: Any) -> None:
        reset(self)
        self.bench_first = None
        self.bench_last = None
        self.bench_seconds = {}

    def bench_received(self: Any, endpoint: str) -> None:
        if self.bench_first is None:
            self.bench_first = time.time()
        received(self, endpoint)

    def bench_finished(self: Any, status: int | None) -> None:
        finished(self, status)
        now = self.bench_last = time.time()
        sec = int(now - (self.bench_first or now))
        bucket = self.bench_seconds.get(sec)
        if bucket is None:
            bucket = self.bench_seconds[sec] = {}
        name = str(status)
        bucket[name] = bucket.get(name, 0) + 1

    def bench_snapshot(self: Any) -> dict[str, Any]:
        doc: dict[str, Any] = snapshot(self)
        doc["bench"] = {
            "first_received": self.bench_first,
            "last_finished": self.bench_last,
            "by_second": {str(k): dict(v) for k, v in sorted(self.bench_seconds.items())},
        }
        return doc

    cls.reset = bench_reset  # type: ignore[method-assign]
    cls.received = bench_received  # type: ignore[method-assign]
    cls.finished = bench_finished  # type: ignore[method-assign]
    cls.snapshot = bench_snapshot  # type: ignore[method-assign]
    sim_command(args=argv, prog_name="runner sim")


# The loopback servers a run can measure against: the runner's simulator (through
# ``harness.py _sim``, for the bench's timestamps) or bench/standin.py, the lean stand-in
# of PEERS.md's set-up, which stamps the same window itself.
SERVERS = {
    "sim": [str(Path(__file__).resolve()), "_sim"],
    "standin": [str(BENCH / "standin.py")],
}
SERVER_LABELS = {
    "sim": "the runner's simulator (runner/sim: uvicorn + ASGI app)",
    "standin": "bench/standin.py (lean asyncio stand-in: chat endpoint, L and C only)",
}


class Sim:
    """A fresh server process: ``with Sim(...) as sim: sim.base_url, sim.stats()``.

    ``server`` picks which one (a key of SERVERS); both take the same arguments and serve
    the same ``/_sim/stats`` keys that run_tool reads.
    """

    def __init__(
        self,
        latency: float,
        concurrency: int,
        *,
        log: Path,
        ledger_ids: bool,
        no_pin: bool,
        server: str = "sim",
    ) -> None:
        self.argv = [
            *_pin(1, no_pin),
            sys.executable,
            *SERVERS[server],
            "--port",
            "0",
            "--latency",
            str(latency),
            "--concurrency",
            str(concurrency),
        ]
        if not ledger_ids:
            self.argv.append("--no-ledger-ids")
        self.log = log
        self.child: Child | None = None
        self.base_url = ""
        self.root = ""
        self.finished: Finished | None = None

    def __enter__(self) -> Sim:
        child = self.child = Child(self.argv, log=self.log)
        deadline = time.monotonic() + 30
        with self.log.with_suffix(".out").open("rb") as f:
            line = b""
            while not line.endswith(b"\n"):
                if child.poll() is not None or time.monotonic() > deadline:
                    self.__exit__(None, None, None)
                    raise RuntimeError(f"server did not start: {child.err_path.read_text()}")
                chunk = f.readline()
                line += chunk
                if not chunk:
                    time.sleep(0.02)
        self.base_url = line.decode().strip()
        self.root = self.base_url.split("/api/", 1)[0]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.child is not None and self.child.result is None:
            self.child.signal(signal.SIGTERM)
            self.finished = self.child.wait(10)

    def stats(self, timeout: float = 10) -> dict[str, Any]:
        """GET /_sim/stats (http.client: urllib would grow this process for nothing)."""
        url = urlsplit(self.root)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=timeout)
        try:
            conn.request("GET", "/_sim/stats")
            doc: dict[str, Any] = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        return doc

    def configure(self, **knobs: Any) -> None:
        """POST /_sim/config: change knobs of the running simulator."""
        url = urlsplit(self.root)
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=10)
        try:
            body = json.dumps(knobs)
            conn.request("POST", "/_sim/config", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            if resp.status != 200:
                raise RuntimeError(f"/_sim/config {knobs}: HTTP {resp.status} {resp.read()!r}")
            resp.read()
        finally:
            conn.close()

    def drain(self, timeout: float = 30) -> dict[str, Any]:
        """The stats once nothing is in flight (answers to a killed client included)."""
        deadline = time.monotonic() + timeout
        stats = self.stats()
        while stats.get("in_flight") and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = self.stats()
        return stats


def write_spec(path: Path, n: int, tag: str, models: int = 1, max_tokens: int = 16) -> Path:
    """N chat rows with unique prompts (the simulator counts identical bodies as twice),
    over the first `models` of MODELS in turn."""
    import orjson

    if path.exists() and path.stat().st_size > 0:
        with path.open("rb") as f:
            if sum(1 for _ in f) == n:
                return path
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        buf = []
        for i in range(n):
            row = {
                "custom_id": f"r{i}",
                "method": "POST",
                "url": "/v4/chat/completions",
                "body": {
                    "model": MODELS[i % models],
                    "messages": [{"role": "user", "content": f"{tag} unique prompt {i}"}],
                    "max_tokens": max_tokens,
                },
            }
            buf.append(orjson.dumps(row))
            if len(buf) >= 10_000:
                f.write(b"\n".join(buf) + b"\n")
                buf = []
        if buf:
            f.write(b"\n".join(buf) + b"\n")
    tmp.replace(path)
    return path


@dataclass
class Run:
    """The figures of one tool on one fresh simulator."""

    tool: str
    c: int  # per model
    latency: float
    n: int
    models: int = 1
    ok: int = 0
    failed: int = 0
    rc: int | None = None
    timed_out: bool = False
    proc_wall_s: float = 0.0
    window_s: float | None = None  # server: first request seen -> last finished
    client_window_s: float | None = None  # client: first sent -> last answered
    cpu_s: float = 0.0
    maxrss_mb: float = 0.0
    p50_added_ms: float | None = None
    p99_added_ms: float | None = None
    http_429: int = 0
    twice: int | None = None
    peak_in_flight: int = 0
    peak_by_model: dict[str, int] = field(default_factory=dict)  # the simulator's ledger
    billed: int = 0
    sim_cpu_s: float | None = None
    startup_cpu_s: float | None = None  # CPU of the same tool on a one-row spec
    other_load: float | None = None  # cores used by other processes while the client ran
    by_second: dict[str, dict[str, int]] = field(default_factory=dict, repr=False)
    note: str = ""

    @property
    def ideal_s(self) -> float:
        return math.ceil(self.n / (self.c * self.models)) * self.latency

    @property
    def wall_s(self) -> float:
        return self.window_s or self.client_window_s or self.proc_wall_s

    @property
    def rate(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    @property
    def of_ideal(self) -> float:
        return self.ideal_s / self.wall_s if self.wall_s and self.ok == self.n else 0.0

    @property
    def cpu_us(self) -> float:
        return self.cpu_s / self.n * 1e6

    @property
    def net_cpu_us(self) -> float | None:
        """CPU per request once the tool's fixed start-up and exit cost is taken off."""
        if self.startup_cpu_s is None or self.n < 2:
            return None
        return max(0.0, self.cpu_s - self.startup_cpu_s) / (self.n - 1) * 1e6

    def as_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.update(ideal_s=self.ideal_s, wall_s=self.wall_s, rate=self.rate)
        d.update(of_ideal=self.of_ideal, cpu_us=self.cpu_us, net_cpu_us=self.net_cpu_us)
        return d


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


GENERATE_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
}


def generate_input(spec: Path) -> tuple[Path, Path]:
    """The spec's prompts as an input table (column `q`) and a two-field schema file."""
    import orjson
    import pyarrow as pa
    import pyarrow.parquet as pq

    table, schema = spec.with_suffix(".gen.parquet"), spec.with_suffix(".gen.schema.json")
    if not table.exists() or table.stat().st_mtime < spec.stat().st_mtime:
        with spec.open("rb") as f:
            prompts = [orjson.loads(line)["body"]["messages"][0]["content"] for line in f]
        pq.write_table(pa.table({"q": prompts}), table)
    schema.write_text(json.dumps(GENERATE_SCHEMA))
    return table, schema


def tool_argv(tool: str, spec: Path, base_url: str, c: int, out: Path) -> list[str]:
    if tool == "generate":
        table, schema = generate_input(spec)
        return [
            sys.executable, "-m", "runner", "generate", str(table), "--prompt", "{q}",
            "--schema", str(schema), "--out", str(out), "--provider", "zai",
            "--base-url", base_url, "--concurrency", str(c), "--no-cache", "--no-progress",
        ]  # fmt: skip
    if tool == "runner":
        return [
            sys.executable, "-m", "runner", "run", str(spec), "--out", str(out),
            "--provider", "zai", "--base-url", base_url, "--concurrency", str(c),
            "--no-progress",
        ]  # fmt: skip
    python = str(CURATOR_PY) if tool == "curator" else sys.executable
    script = str(PEERS / PEER_SCRIPTS[tool])
    return [
        python, script, "--spec", str(spec), "--base-url", base_url,
        "--concurrency", str(c), "--api-key", API_KEY,
    ]  # fmt: skip


def summarize_results(out: Path) -> dict[str, Any]:
    """In a helper process: the runner's results.parquet as counts, window and latencies."""
    import pyarrow.parquet as pq

    t = pq.read_table(
        out / "results.parquet", columns=["status", "latency_s", "started_at", "finished_at"]
    )
    status = t.column("status").to_pylist()
    lat = [x for x in t.column("latency_s").to_pylist() if x is not None]
    starts = [x for x in t.column("started_at").to_pylist() if x is not None]
    ends = [x for x in t.column("finished_at").to_pylist() if x is not None]
    return {
        "ok": status.count("succeeded"),
        "failed": len(status) - status.count("succeeded"),
        "p50": _percentile(lat, 0.5),
        "p99": _percentile(lat, 0.99),
        "window": (max(ends) - min(starts)).total_seconds() if starts and ends else None,
    }


def _runner_rows(out: Path, latency: float, run: Run) -> None:
    """Read the runner's own per-row record (in a helper process: see the module doc)."""
    if not (out / "results.parquet").exists():
        run.note = "no results.parquet"
        return
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "_results", str(out)],
        cwd=WORK, env={**os.environ, **_child_env}, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0:
        run.note = "unreadable results.parquet: " + proc.stderr.strip()[-160:]
        return
    doc = json.loads(proc.stdout)
    run.ok, run.failed, run.client_window_s = doc["ok"], doc["failed"], doc["window"]
    if doc["p50"] is not None:
        run.p50_added_ms = (doc["p50"] - latency) * 1e3
        run.p99_added_ms = (doc["p99"] - latency) * 1e3


def _peer_report(stdout: str, latency: float, run: Run) -> None:
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if not lines:
        run.note = "no report"
        return
    doc = json.loads(lines[-1])
    run.ok, run.failed = doc["ok"], doc["failed"]
    if doc.get("p50") is not None:
        run.p50_added_ms = (doc["p50"] - latency) * 1e3
        run.p99_added_ms = (doc["p99"] - latency) * 1e3
    if doc.get("t_first") and doc.get("t_last"):
        run.client_window_s = doc["t_last"] - doc["t_first"]
    if doc.get("errors"):
        run.note = "; ".join(f"{k} x{v}" for k, v in doc["errors"].items())[:200]


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _self_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def machine_busy_s() -> float:
    """CPU seconds all processes have used since boot (/proc/stat), 0.0 where unreadable."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of a running process, from /proc/PID/stat."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def wait_idle(threshold: float, max_wait: float) -> float:
    """Wait until other processes use under ``threshold`` cores over 1 s; returns that load.

    The machine is shared (other test suites may run); a run measured while they do is
    flagged in its note, and this wait avoids most such runs.
    """
    deadline = time.monotonic() + max_wait
    while True:
        t0, b0 = time.monotonic(), machine_busy_s()
        time.sleep(1.0)
        load = (machine_busy_s() - b0) / (time.monotonic() - t0)
        if load < threshold or time.monotonic() >= deadline:
            return load


# Set from the command line: wait for a quiet machine before each run (cores, seconds).
IDLE = {"threshold": 0.25, "max_wait": 60.0}


def run_tool(
    tool: str,
    c: int,
    latency: float,
    spec: Path,
    n: int,
    *,
    no_pin: bool,
    sim_c: int | None = None,
    ledger_ids: bool = True,
    models: int = 1,
    server: str = "sim",
) -> Run:
    """Run one tool to the end against a fresh server (limit ``sim_c``, default C).

    ``server``: "sim" (the runner's simulator) or "standin" (bench/standin.py).
    """
    sim_c = sim_c or c
    run = Run(tool, sim_c, latency, n, models)
    tag = f"{tool}-c{c}-l{latency}-{time.monotonic_ns()}"
    out = WORK / "jobs" / tag
    shutil.rmtree(out, ignore_errors=True)
    timeout = 90 + 12 * math.ceil(n / sim_c) * latency
    logs = WORK / "logs"
    if IDLE["max_wait"] > 0:
        wait_idle(IDLE["threshold"], IDLE["max_wait"])
    with Sim(
        latency, sim_c, log=logs / f"sim-{tag}", ledger_ids=ledger_ids, no_pin=no_pin, server=server
    ) as sim:
        argv = [*_pin(0, no_pin), *tool_argv(tool, spec, sim.base_url, c, out)]
        env = {"ZAI_API_KEY": API_KEY, "OPENAI_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
        if tool == "curator":
            env["CURATOR_CACHE_DIR"] = str(out / "curator-cache")
            env["CURATOR_DISABLE_RICH_DISPLAY"] = "1"
        assert sim.child is not None
        sim0, busy0 = process_cpu_s(sim.child.pid), machine_busy_s()
        self0 = _self_cpu_s()
        done = Child(argv, log=logs / tag, env=env).wait(timeout)
        other = machine_busy_s() - busy0 - done.cpu_s - (_self_cpu_s() - self0)
        other -= process_cpu_s(sim.child.pid) - sim0
        run.other_load = max(0.0, other / done.wall_s) if done.wall_s else None
        time.sleep(0.05)  # let the server finish counting the last response
        stats = sim.stats()
    run.rc, run.timed_out, run.proc_wall_s = done.rc, done.timed_out, done.wall_s
    run.cpu_s, run.maxrss_mb = done.cpu_s, done.maxrss_mb
    if sim.finished is not None:
        run.sim_cpu_s = sim.finished.cpu_s
    if tool in ("runner", *OWN_TOOLS):
        _runner_rows(out, latency, run)
    else:
        _peer_report(done.stdout, latency, run)
    bench = stats.get("bench") or {}
    if bench.get("first_received") and bench.get("last_finished"):
        run.window_s = bench["last_finished"] - bench["first_received"]
    run.by_second = bench.get("by_second") or {}
    run.http_429 = int(stats.get("statuses", {}).get("429", 0))
    run.peak_in_flight = int(stats.get("peak_in_flight", 0))
    for peaks in (stats.get("peak_concurrency") or {}).values():
        for model, peak in peaks.items():
            run.peak_by_model[model] = max(peak, run.peak_by_model.get(model, 0))
    run.billed = int(stats.get("billed", {}).get("requests", 0))
    if ledger_ids:
        run.twice = len(stats.get("duplicates", {}).get("fingerprint", []))
    if done.timed_out:
        run.note = f"timed out after {timeout:.0f}s; {run.note}".rstrip("; ")
    elif run.ok != n and not run.note:
        tail = done.stderr.strip().splitlines()[-1:] or [""]
        run.note = f"rc={done.rc} {tail[0][:160]}".strip()
    if run.other_load is not None and run.other_load > IDLE["threshold"]:
        run.note = f"{run.note}; other processes used {run.other_load:.2f} cores".lstrip("; ")
    shutil.rmtree(out, ignore_errors=True)
    return run


def _git(*cmd: str) -> str:
    proc = subprocess.run(["git", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=60)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def compile_runner(src: Path = ROOT) -> None:
    """Byte-compile the runner under `src` before measuring it.

    An installed package has its .pyc files (pip writes them), but a checkout run with
    PYTHONDONTWRITEBYTECODE set (as CI images often do) compiles every module from source
    at each start: 60 ms of start-up CPU that no user pays. py_compile writes the files
    whatever that variable says.
    """
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src / "runner")], check=True)


def select_source(args: argparse.Namespace) -> str:
    """Point the children's PYTHONPATH at the runner to measure; say which one it is."""
    described = _select_source(args)
    compile_runner(Path(_child_env.get("PYTHONPATH", ROOT)))
    return described


def _select_source(args: argparse.Namespace) -> str:
    if args.runner_src:
        src = args.runner_src.resolve()
        _child_env["PYTHONPATH"] = str(src)
        return f"runner package under {src}"
    head = _git("rev-parse", "--short", "HEAD") or "unknown"
    if args.runner_ref:
        sha = _git("rev-parse", "--short", args.runner_ref)
        if not sha:
            raise SystemExit(f"unknown git ref {args.runner_ref!r}")
        src = WORK / f"src-{sha}"
        if not (src / "runner").exists():
            src.mkdir(parents=True, exist_ok=True)
            archive = subprocess.run(
                ["git", "archive", sha, "runner"], cwd=ROOT, capture_output=True, timeout=120
            )
            subprocess.run(
                ["tar", "-x", "-C", str(src)], input=archive.stdout, check=True, timeout=120
            )
        _child_env["PYTHONPATH"] = str(src)
        named = "" if sha.startswith(args.runner_ref) else f" ({args.runner_ref})"
        return f"commit {sha}{named}"
    dirty = _git("status", "--porcelain", "--", "runner")
    return f"working tree at {head}" + (" with uncommitted changes in runner/" if dirty else "")


if __name__ == "__main__":
    if sys.argv[1:2] == ["_sim"]:
        serve_timed_sim(sys.argv[2:])
    elif sys.argv[1:2] == ["_results"]:
        print(json.dumps(summarize_results(Path(sys.argv[2]))))
    else:
        sys.exit("internal helper of bench/run_bench.py")
