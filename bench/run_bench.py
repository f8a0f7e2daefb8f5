"""Throughput, rate-limit and scale benchmarks of the runner against its peers, on loopback.

Every measured client runs as its own process against a fresh server process (one per
run), the server pinned to core 1 and the client to core 0 where ``taskset`` exists and
there are two cores. ``--server`` picks the server: ``sim`` (the default), the runner's
simulator, started through harness.py, which adds the two timestamps below and per-second
status counts to ``/_sim/stats``; or ``standin``, bench/standin.py, the lean stand-in of
PEERS.md's set-up (chat endpoint, latency L and limit C only), which at 2,000 in flight
adds far less queueing of its own than the simulator. The figures follow PEERS.md: wall
time is the server's own window, from the first request it saw to the last it finished;
ideal = ceil(N/(C x models)) x L; "of ideal" = ideal / wall. CPU time and peak RSS are the
client process's own, read from ``wait4``; the server is not counted (its CPU is kept in
the raw results as ``sim_cpu_s``). Each docs section names the server it was measured on.

    python bench/run_bench.py                 # the default run: 5 scenarios + rate limit
    python bench/run_bench.py --quick         # the same, fewer rows (while developing)
    python bench/run_bench.py --server standin  # the same against bench/standin.py
    python bench/run_bench.py --scale         # 1M rows: peak RSS, kill and resume

Each mode rewrites only its own sections of docs/BENCHMARKS.md, so the scale figures stay
when the default run is repeated. Raw figures go to bench/out/*.json (ignored by git).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import json
import math
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import harness
import report
from harness import (
    CURATOR_PY,
    PEER_NAMES,
    PEER_SCRIPTS,
    ROOT,
    SCENARIOS,
    WORK,
    Run,
    _kill_children,
    _on_signal,
    run_tool,
    select_source,
    write_spec,
)
from scale import scale


def scenario_rows(c: int, args: argparse.Namespace) -> int:
    if args.rows:
        return int(args.rows)
    if args.quick:
        return max(6 * c, 300)
    if c >= 2_000:
        return 10 * c
    return 10_000 if c >= 500 else max(3_000, 20 * c)


def measure(args: argparse.Namespace, *a: Any, **kw: Any) -> Run:
    """run_tool, run again (up to --retry-noisy times) while other processes disturbed it."""
    kw.setdefault("server", args.server)
    r = run_tool(*a, no_pin=args.no_pin, **kw)
    for _ in range(args.retry_noisy):
        if r.other_load is None or r.other_load <= args.idle_threshold:
            break
        print(f"  (rerun {r.tool}: other processes used {r.other_load:.2f} cores)", flush=True)
        r = run_tool(*a, no_pin=args.no_pin, **kw)
    return r


def startup_costs(tools: list[str], args: argparse.Namespace) -> dict[str, Run]:
    """Each tool on a one-row spec: its fixed cost (imports, set-up, exit)."""
    spec = write_spec(WORK / "spec-1.jsonl", 1, "startup")
    costs = {}
    for tool in tools:
        costs[tool] = measure(args, tool, 50, 0.0, spec, 1)
        r = costs[tool]
        print(
            f"  start-up {tool:>9}: {r.proc_wall_s:5.2f} s wall, {r.cpu_s * 1e3:6.0f} ms CPU, "
            f"{r.maxrss_mb:4.0f} MB{' ⚠ ' + r.note if r.note else ''}",
            flush=True,
        )
    return costs


def throughput(tools: list[str], args: argparse.Namespace) -> dict[str, Any]:
    print("start-up cost per tool (one-row spec, L=0):", flush=True)
    costs = startup_costs(tools, args)
    results: dict[str, list[Run]] = {}
    every: dict[str, list[list[Run]]] = {}
    k = args.models
    for c, latency in args.scenario_list:
        n = scenario_rows(c * k, args)
        name = f"spec-{n}.jsonl" if k == 1 else f"spec-{n}-m{k}.jsonl"
        spec = write_spec(WORK / name, n, "bench", models=k)
        ideal = math.ceil(n / (c * k)) * latency
        shape = f"C={c}" if k == 1 else f"{k} models × C={c} ({k * c:,} in flight)"
        key = f"{shape}, L={latency:g} s, N={n:,} (ideal {ideal:.1f} s)"
        print(f"== {key}", flush=True)
        per_tool: list[list[Run]] = [[] for _ in tools]
        for rep in range(args.repeat):
            for i, tool in enumerate(tools):
                r = measure(args, tool, c, latency, spec, n, models=k)
                r.startup_cpu_s = costs[tool].cpu_s
                per_tool[i].append(r)
                print(
                    f"  [{rep + 1}/{args.repeat}] {tool:>9}: {r.of_ideal:.2f} of ideal, "
                    f"{r.rate:,.0f} rows/s, {r.cpu_us:,.0f} µs CPU/req, {r.maxrss_mb:.0f} MB, "
                    f"proc {r.proc_wall_s:.1f} s{' ⚠ ' + r.note if r.note else ''}",
                    flush=True,
                )
        results[key] = [report.median_run(rs) for rs in per_tool]
        every[key] = per_tool
        report.print_table(report.table(results[key], key))
    return {"costs": costs, "results": results, "every": every}


def rate_limit(args: argparse.Namespace) -> dict[str, Any]:
    real_c, wrong_c, latency = 100, 300, 0.2
    n = args.rows or (4_000 if args.quick else 20_000)
    spec = write_spec(WORK / f"spec-{n}.jsonl", n, "bench")
    print(f"== rate limit: simulator limit {real_c}, L={latency} s, N={n:,}", flush=True)
    runs = {}
    for label, c in (
        ("tier too high (--concurrency 300)", wrong_c),
        ("tier right (--concurrency 100)", real_c),
    ):
        r = measure(args, "runner", c, latency, spec, n, sim_c=real_c)
        runs[label] = r
        conv = report.converged_after(r.by_second)
        print(
            f"  {label}: {r.of_ideal:.2f} of ideal, {r.http_429} 429s "
            f"({r.http_429 / max(1, r.billed + r.http_429):.1%} of requests), converged after "
            f"{'never' if conv is None else f'{conv:.0f} s'}, then "
            f"{report.after_convergence(r.by_second, '429') or 0:.2f} 429s/s"
            f"{' ⚠ ' + r.note if r.note else ''}",
            flush=True,
        )
    return {"runs": runs, "n": n, "latency": latency, "real_c": real_c}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="Fewer rows, for development.")
    p.add_argument("--rows", type=int, help="Rows per scenario (overrides the default N).")
    p.add_argument(
        "--scenarios",
        default="default",
        help="Comma list of C:L, e.g. 50:0.2,500:1.0; 'none' skips throughput.",
    )
    p.add_argument(
        "--peers",
        default="all",
        help=f"Comma list from {','.join(PEER_NAMES)}; 'none' runs the runner alone.",
    )
    p.add_argument("--repeat", type=int, default=1, help="Runs per tool and scenario (median).")
    p.add_argument(
        "--models",
        type=int,
        default=1,
        help="Spread the rows over this many models (1-4); C is per model, as the tier is.",
    )
    p.add_argument("--no-rate-limit", action="store_true", help="Skip the rate-limit scenario.")
    p.add_argument("--no-pin", action="store_true", help="Do not pin with taskset.")
    p.add_argument(
        "--server",
        choices=sorted(harness.SERVERS),
        default="sim",
        help="The loopback server: sim (the runner's simulator) or standin (bench/standin.py, "
        "PEERS.md's lean stand-in). The --scale mode always uses the simulator.",
    )
    p.add_argument(
        "--idle-wait",
        type=float,
        default=120.0,
        help="Before each run, wait up to this many seconds for other processes to use "
        "under --idle-threshold cores (0: don't wait). Runs measured while they used more "
        "are flagged.",
    )
    p.add_argument("--idle-threshold", type=float, default=0.25, help="Cores; see --idle-wait.")
    p.add_argument(
        "--retry-noisy",
        type=int,
        default=2,
        help="Measure a run again, up to this many times, when other processes used more "
        "than --idle-threshold cores while it ran.",
    )
    p.add_argument("--out", type=Path, default=ROOT / "docs", help="Folder for BENCHMARKS.md.")
    p.add_argument("--no-docs", action="store_true", help="Print only; leave docs/ alone.")
    p.add_argument(
        "--section",
        default="throughput",
        help="BENCHMARKS.md section for the throughput tables (another name keeps the main "
        "one and the plot, e.g. for a --repeat head-to-head).",
    )
    p.add_argument("--title", default="Throughput against peers", help="That section's title.")
    p.add_argument(
        "--runner-ref", help="Measure the runner (and simulator) of this git ref, e.g. HEAD."
    )
    p.add_argument("--runner-src", type=Path, help="Measure the runner package under this folder.")
    p.add_argument("--scale", action="store_true", help="Only the 1M-row scale and resume test.")
    p.add_argument(
        "--render",
        nargs="+",
        type=Path,
        metavar="JSON",
        help="Rewrite the docs from saved bench/out/*.json (throughput, ratelimit, scale).",
    )
    p.add_argument("--scale-rows", type=int, default=1_000_000)
    p.add_argument("--scale-concurrency", type=int, default=500)
    p.add_argument("--scale-latency", type=float, default=0.05)
    args = p.parse_args(argv)
    args.argv = argv
    if args.scenarios == "default":
        args.scenario_list = list(SCENARIOS)
    elif args.scenarios == "none":
        args.scenario_list = []
    else:
        args.scenario_list = []
        for item in args.scenarios.split(","):
            c, _, lat = item.replace("x", ":").partition(":")
            args.scenario_list.append((int(c), float(lat)))
    args.plot_name = "bench_throughput.png"
    return args


def available_peers(names: str) -> list[str]:
    import importlib.util

    wanted = PEER_NAMES if names == "all" else [] if names == "none" else names.split(",")
    tools = []
    for name in wanted:
        if name in harness.OWN_TOOLS:
            tools.append(name)
            continue
        if name not in PEER_SCRIPTS:
            raise SystemExit(f"unknown peer {name!r}; choose from {', '.join(PEER_NAMES)}")
        if name in ("openai", "litellm") and importlib.util.find_spec(name) is None:
            print(f"skipping {name}: not installed (pip install {name})", flush=True)
            continue
        if name == "curator":
            ok = CURATOR_PY.exists() and subprocess.run(
                [str(CURATOR_PY), "-c", "import bespokelabs.curator"],
                capture_output=True, timeout=120,
            ).returncode == 0  # fmt: skip
            if not ok:
                print(f"skipping curator: no working {CURATOR_PY.relative_to(ROOT)}", flush=True)
                continue
        tools.append(name)
    return tools


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    atexit.register(_kill_children)
    signal.signal(signal.SIGTERM, _on_signal)
    for sub in ("jobs", "logs"):
        (WORK / sub).mkdir(parents=True, exist_ok=True)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    harness.IDLE.update(threshold=args.idle_threshold, max_wait=args.idle_wait)
    m = report.machine()
    m["source"] = select_source(args)
    m["server"] = harness.SERVER_LABELS["sim" if args.scale else args.server]
    print(
        f"machine: {m['nproc']} cores, {m['cpu']}, Python {m['python']}; "
        f"pinning {'on' if m['pinned'] and not args.no_pin else 'off'}; server {args.server}",
        flush=True,
    )
    doc = args.out / "BENCHMARKS.md"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.render:
        return render(args)
    meta = {
        "machine": m,
        "argv": argv,
        "repeat": args.repeat,
        "no_pin": args.no_pin,
        "section": args.section,
        "title": args.title,
    }
    if args.scale:
        data = scale(args)
        _dump(WORK / f"scale-{stamp}.json", {**data, **meta})
        if not args.no_docs:
            report.replace_section(doc, "scale", report.scale_md(data, args, m))
        return 0
    tools = ["runner", *available_peers(args.peers)]
    sections: dict[str, list[str]] = {}
    data: dict[str, Any] | None = None
    if args.scenario_list:
        data = throughput(tools, args)
        _dump(WORK / f"throughput-{stamp}.json", {**data, **meta})
        sections[args.section] = report.throughput_md(data, args, m)
    if not args.no_rate_limit:
        rl = rate_limit(args)
        _dump(WORK / f"ratelimit-{stamp}.json", {**rl, **meta})
        sections["ratelimit"] = report.rate_limit_md({**rl, **meta}, args)
    if data is not None:
        report.print_table(report.summary_md(data["results"]))
    # The harness's own peak RSS is a floor under every child's (see harness.py).
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"harness peak RSS while measuring: {own:.0f} MB", flush=True)
    if not args.no_docs:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, body in sections.items():
            report.replace_section(doc, name, body)
        if data is not None and args.section == "throughput":
            report.plot(data["results"], args.out / args.plot_name)  # matplotlib: last
        print(f"wrote {doc}", flush=True)
    return 0


def _run(d: dict[str, Any]) -> Run:
    names = {f.name for f in dataclasses.fields(Run)}
    return Run(**{k: v for k, v in d.items() if k in names})


def render(args: argparse.Namespace) -> int:
    """Rebuild docs sections (and the plot) from saved raw results, measuring nothing."""
    doc = args.out / "BENCHMARKS.md"
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.render:
        raw = json.loads(path.read_text())
        m = raw.get("machine") or report.machine()
        view = argparse.Namespace(**vars(args))
        view.argv = raw.get("argv", [a for a in args.argv if not a.endswith(".json")])
        view.repeat = raw.get("repeat", 1)
        view.no_pin = raw.get("no_pin", args.no_pin)
        if path.name.startswith("throughput"):
            data = {
                "costs": {t: _run(r) for t, r in raw["costs"].items()},
                "results": {k: [_run(r) for r in rs] for k, rs in raw["results"].items()},
                "every": {k: [[_run(r) for r in rs] for rs in v] for k, v in raw["every"].items()},
            }
            view.section = raw.get("section", "throughput")
            view.title = raw.get("title", args.title)
            report.replace_section(doc, view.section, report.throughput_md(data, view, m))
            if view.section == "throughput":
                report.plot(data["results"], args.out / args.plot_name)
        elif path.name.startswith("ratelimit"):
            raw["runs"] = {k: _run(r) for k, r in raw["runs"].items()}
            report.replace_section(doc, "ratelimit", report.rate_limit_md(raw, view))
        elif path.name.startswith("scale"):
            raw["full"] = _run(raw["full"])
            report.replace_section(doc, "scale", report.scale_md(raw, view, m))
        else:
            raise SystemExit(f"{path}: expected a throughput-, ratelimit- or scale- file")
        print(f"rendered {path.name} into {doc}", flush=True)
    return 0


def _dump(path: Path, data: Any) -> None:
    def default(o: Any) -> Any:
        if isinstance(o, Run):
            return o.as_dict()
        if isinstance(o, Path):
            return str(o)
        raise TypeError(type(o).__name__)

    path.write_text(json.dumps(data, default=default, indent=1))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
