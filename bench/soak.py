"""`make soak`: the reliability evidence at length - 100+ SIGKILLs, a fault storm, hostile specs.

The same harness as tests/test_reliability.py (tests/reliability_harness.py), run long:

- **kills**: rounds of one mixed job each (chat rows, video tasks, row errors, failing
  tasks, malformed lines) against a simulator process, every round SIGKILLed at chosen
  moments (startup, mid-pool, at a commit, in the submit window, while polling, mid-download)
  until the job is done; every other round also has faults on (429, 500, 503, drops, stalls).
  After each kill the checkpoint it left is integrity-checked; after each round the whole
  job is audited (one terminal result per row, tasks accepted at most once, each row's cost
  from its own usage, `runner status` total, results.parquet, artifacts).
- **storm**: a chat job through 30 % 429 / 5 % 500 / 5 % 503 / 2 % drops / 2 % stalls; the
  platform's in-flight count must drop, and grow back once the storm ends.
- **hostile**: N hypothesis-generated spec files mixing valid and malformed lines, each a
  job through `run_job`; every bad line must fail as `invalid_row` naming its line.

Prints the figures docs/RELIABILITY.md quotes and writes them to bench/out/soak-*.json.
Exit status 1 if any promise broke.

    python bench/soak.py                    # 100 kills, storm, 200 hostile specs (~5 min)
    python bench/soak.py --kills 30 --hostile 50 --no-storm
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import reliability_harness as h  # noqa: E402

# Every other round: the simulator misbehaves too (stalls shorter than the runner's timeout).
FAULTY = (
    "--rate-429", "0.05", "--rate-500", "0.02", "--rate-503", "0.02",
    "--rate-drop", "0.01", "--rate-stall", "0.005", "--stall-seconds", "1",
)  # fmt: skip


def kill_rounds(total: int, per_round: int, seed: int, work: Path) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    faults: Counter[str] = Counter()
    phases: Counter[str] = Counter()
    flags: Counter[str] = Counter()
    failures: list[str] = []
    rounds = 0
    while totals["kills"] < total:
        kills = min(per_round, total - totals["kills"])
        faulty = rounds % 2 == 1
        name = (
            f"round {rounds + 1} ({'faults on' if faulty else 'no faults'}, seed {seed + rounds})"
        )
        folder = work / f"round-{rounds}"
        t0 = time.monotonic()
        try:
            run = h.crash_loop(
                folder, kills=kills, seed=seed + rounds, sim_args=FAULTY if faulty else ()
            )
            audit = h.audit(run.out, run.spec, run.stats)
            files = h.check_artifacts(run.out, h.read_rows(run.out))
            bad_kills = [k for k in run.kills if k.integrity != "ok"]
            if bad_kills:
                failures.append(f"{name}: integrity after kill: {bad_kills}")
        except AssertionError as exc:
            failures.append(f"{name}: {exc!r}\n{traceback.format_exc()}")
            print(f"  {name}: FAILED: {exc!r}", flush=True)
            rounds += 1
            totals["kills"] += kills  # count the attempt, so a broken runner still ends
            continue
        rounds += 1
        totals.update(
            kills=len(run.kills), runs=run.runs, rows=audit.rows, succeeded=audit.succeeded,
            failed=audit.failed, invalid=audit.invalid, submit_unknown=audit.submit_unknown,
            unknown_accepted=audit.unknown_accepted,
            tasks=audit.tasks, task_submissions=audit.task_submissions,
            duplicate_task_submissions=audit.duplicate_task_submissions,
            rebilled_sync_rows=audit.rebilled_sync_rows,
            rebilled_requests=audit.rebilled_requests, artifacts=files,
            integrity_checks=len(run.kills) + 1,
            rows_lost=audit.rows - (audit.succeeded + audit.failed),
        )  # fmt: skip
        faults.update({k: v for k, v in run.stats["faults"].items() if v})
        phases.update(run.phases())
        flags.update(run.flags())
        print(
            f"  {name}: {len(run.kills)} kills, {run.runs} runs, {audit.rows} rows "
            f"({audit.succeeded} ok, {audit.failed} failed: {audit.errors}), "
            f"{audit.rebilled_sync_rows} sync rows re-billed, "
            f"{audit.duplicate_task_submissions} duplicate task submissions, "
            f"{time.monotonic() - t0:.0f}s",
            flush=True,
        )
        shutil.rmtree(folder, ignore_errors=True)
    marker = faults.pop("marker", 0)  # deliberate row errors in the spec, not faults
    return {
        "rounds": rounds,
        **dict(totals),
        "faults_injected": sum(faults.values()),
        "faults": dict(faults),
        "row_error_markers": marker,
        "kill_phases": dict(phases),
        "kill_flags": dict(flags),
        "failures": failures,
    }


def storm_scenario(work: Path) -> dict[str, Any]:
    import anyio

    try:
        s = anyio.run(lambda: h.storm(work / "storm", rows=8000, storm_s=8.0))
    except AssertionError as exc:
        return {"failures": [f"storm: {exc!r}"]}
    failures = []
    lost = [r for r in s.rows if r["status"] not in h.TERMINAL]
    if lost or len(s.rows) != 8000:
        failures.append(f"storm: {len(lost)} rows not terminal of {len(s.rows)}")
    if not (s.storm_in_flight <= 0.7 * s.calm_in_flight and s.calm_in_flight >= 0.75 * s.cap):
        failures.append(f"storm: no clear drop and recovery: {s.per_second}")
    out = asdict(s)
    out.pop("rows")
    out["failed_rows"] = sum(r["status"] == "failed" for r in s.rows)
    out["faults_injected"] = sum(s.faults.values())
    out["failures"] = failures
    return out


def hostile_scenario(examples: int, work: Path) -> dict[str, Any]:
    import functools

    import anyio.from_thread
    from hypothesis import HealthCheck, given, settings

    from runner import RetryConfig, Settings, run_job
    from runner.settings import Secret
    from runner.sim import SimConfig, Simulator

    counts: Counter[str] = Counter()
    with (
        anyio.from_thread.start_blocking_portal("asyncio") as portal,
        portal.wrap_async_context_manager(Simulator(SimConfig())) as sim,
    ):

        @settings(
            max_examples=examples, deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        )  # fmt: skip
        @given(h.hostile_lines())
        def one(spec: Any) -> None:
            data, lines = spec
            with tempfile.TemporaryDirectory(dir=work) as tmp:
                path = Path(tmp) / "spec.jsonl"
                path.write_bytes(data)
                s = Settings(
                    spec=path, out=Path(tmp) / "out", base_url=sim.base_url,
                    api_key=Secret(h.KEY), model=h.CHAT_MODEL, endpoint="chat/completions",
                    concurrency=4, progress=False, retry=RetryConfig(testing=True),
                )  # fmt: skip
                result = portal.call(functools.partial(run_job, s, handle_signals=False))
                good, bad = h.check_hostile(h.read_rows(Path(tmp) / "out"), lines)
                assert result.exit_code == (1 if bad else 0), result.message
                counts.update(specs=1, valid_rows=good, bad_rows=bad, lines=len(lines))

        try:
            one()
        except Exception as exc:
            return {**counts, "failures": [f"hostile: {exc!r}\n{traceback.format_exc()}"]}
    return {**counts, "failures": []}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--kills", type=int, default=100, help="SIGKILLs in all (default 100)")
    ap.add_argument("--per-round", type=int, default=12, help="kills per job (default 12)")
    ap.add_argument("--hostile", type=int, default=200, help="hostile spec files (default 200)")
    ap.add_argument("--no-storm", action="store_true", help="skip the fault storm")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--json", type=Path, help="where to write the figures")
    args = ap.parse_args()

    started = time.monotonic()
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S")}
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        print(f"kills: {args.kills} SIGKILLs, {args.per_round} per job", flush=True)
        report["kills"] = kill_rounds(args.kills, args.per_round, args.seed, work)
        if not args.no_storm:
            print("storm: 30 % 429, 5 % 500, 5 % 503, 2 % drops, 2 % stalls", flush=True)
            report["storm"] = storm_scenario(work)
        if args.hostile:
            print(f"hostile: {args.hostile} generated spec files", flush=True)
            report["hostile"] = hostile_scenario(args.hostile, work)
    report["seconds"] = round(time.monotonic() - started, 1)
    failures = [f for part in report.values() if isinstance(part, dict)
                for f in part.get("failures", [])]  # fmt: skip
    k = report["kills"]
    lines = [
        "",
        f"kills survived:               {k.get('kills', 0)} in {k['rounds']} jobs "
        f"({k.get('runs', 0)} runs)",
        f"  phases armed:               {k['kill_phases']}",
        f"  states seen at the kill:    {k['kill_flags']}",
        f"rows:                         {k.get('rows', 0)} ({k.get('succeeded', 0)} succeeded, "
        f"{k.get('failed', 0)} failed by design: row errors, failing tasks, "
        f"{k.get('invalid', 0)} malformed lines, {k.get('submit_unknown', 0)} submit_unknown, "
        f"{k.get('unknown_accepted', 0)} of which the platform had accepted)",
        f"faults injected:              {k['faults_injected']} {k['faults']}",
        f"rows lost:                    {k.get('rows_lost', 0)}",
        f"duplicate task submissions:   {k.get('duplicate_task_submissions', 0)} "
        f"({k.get('task_submissions', 0)} submissions for {k.get('tasks', 0)} task rows)",
        f"sync rows re-billed:          {k.get('rebilled_sync_rows', 0)} "
        f"({k.get('rebilled_requests', 0)} extra requests: answers lost with a killed process "
        "or a stall given up on; expected, see docs/RELIABILITY.md)",
        f"integrity checks:             {k.get('integrity_checks', 0)} ok",
    ]
    if "storm" in report and "cap" in report["storm"]:
        s = report["storm"]
        lines += [
            f"storm:                        {s['faults_injected']} faults {s['faults']}, "
            f"{s['failed_rows']} rows failed",
            f"  in flight (cap {s['cap']}):         {s['storm_in_flight']:.1f} at the storm's "
            f"end ({s['platform_storm_in_flight']:.1f} as the platform counts, stalls "
            f"included), {s['calm_in_flight']:.1f} once regrown ({s['recovered_after']} s "
            "after it)",
        ]
    if "hostile" in report:
        x = report["hostile"]
        lines.append(
            f"hostile specs:                {x.get('specs', 0)} files, {x.get('lines', 0)} "
            f"lines: {x.get('bad_rows', 0)} bad rows each failed with its line number, "
            f"{x.get('valid_rows', 0)} valid rows all answered"
        )
    lines.append(f"time:                         {report['seconds']} s")
    lines.append("RESULT: " + ("ok" if not failures else f"{len(failures)} FAILURES"))
    print("\n".join(lines))
    for f in failures:
        print("\n" + f, file=sys.stderr)
    path = args.json or ROOT / "bench" / "out" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=str))
    print(f"figures: {path}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
