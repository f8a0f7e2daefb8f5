"""The totals `runner status` reads are kept as rows are written: they must always equal
what summing the checkpoint's rows and superseded attempts gives.

The sums here are written out in plain SQL over `rows` and `attempts`, apart from the
store's own recount, so a drift in either shows. In process: every way a row is written,
replaced, moved or dropped, in random orders (hypothesis). As a user runs it: a job killed
with SIGKILL mid-run and resumed, then `runner retry`, then a checkpoint from before the
totals existed.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import reliability_harness as h
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from simproc import SimProcess

from runner.cost import NANO
from runner.outcome import Outcome
from runner.store import Store

ROOT = Path(__file__).resolve().parents[1]
_SUMS = ("cost_nano", "prompt_tokens", "completion_tokens", "cached_tokens", "total_tokens")


def _cut(length: bool) -> str:
    return json.dumps({"choices": [{"finish_reason": "length" if length else "stop"}]})


def expected(db: sqlite3.Connection) -> dict[str, Any]:
    """What status must say, summed from the rows and attempts themselves."""
    tables = ["rows"]
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'attempts'").fetchone():
        tables.append("attempts")
    statuses = dict(db.execute("SELECT status, COUNT(*) FROM rows GROUP BY status").fetchall())
    codes = dict(
        db.execute(
            "SELECT COALESCE(error_code, 'None'), COUNT(*) FROM rows WHERE status = 'failed' "
            "GROUP BY 1"
        ).fetchall()
    )
    sums = dict.fromkeys(_SUMS, 0)
    models: dict[str, dict[str, int]] = {}
    for t in tables:
        for model, *values in db.execute(
            f"SELECT COALESCE(model, ''), {', '.join(f'SUM({s})' for s in _SUMS)} "
            f"FROM {t} GROUP BY 1"
        ):
            m = models.setdefault(model, dict.fromkeys(_SUMS, 0))
            for s, v in zip(_SUMS, values, strict=True):
                sums[s] += int(v or 0)
                m[s] += int(v or 0)
    truncated = sum(
        (json.loads(r).get("choices") or [{}])[0].get("finish_reason") == "length"
        for (r,) in db.execute(
            "SELECT response FROM rows WHERE status = 'succeeded' AND response IS NOT NULL"
        )
    )
    unpriced = db.execute(
        "SELECT COUNT(*) FROM rows WHERE status = 'succeeded' AND cost_nano IS NULL"
    ).fetchone()[0]
    return {
        "succeeded": statuses.get("succeeded", 0),
        "failed": statuses.get("failed", 0),
        "codes": codes,
        "sums": sums,
        "models": models,
        "truncated": truncated,
        "unpriced": unpriced,
    }


def seen_by_store(store: Store) -> dict[str, Any]:
    s = store.summary()
    return {
        "succeeded": s["succeeded"],
        "failed": s["failed"],
        "codes": s["error_codes"],
        "sums": {"cost_nano": s["cost_nano"], **{k: s["tokens"][k] for k in _SUMS[1:]}},
        "models": {
            ("" if name.startswith("(invalid") else name): {k: m[k] for k in _SUMS}
            for name, m in s["by_model"].items()
        },
        "truncated": store.truncated_rows(),
        "unpriced": s["unpriced"],
    }


def check(store: Store) -> None:
    assert store.kept_totals() == store.recount()
    final = [seq for (seq,) in store.db.execute(
        "SELECT seq FROM rows WHERE status IN ('succeeded', 'failed')")]  # fmt: skip
    blocks: dict[int, int] = {}
    for seq in final:
        blocks[seq >> 12] = blocks.get(seq >> 12, 0) + 1
    assert sorted(store.done_blocks()) == sorted(blocks.items())
    total = max(final, default=0) + 1
    bits = store.done_bitmap(total)
    assert [s for s in range(total) if bits[s >> 3] >> (s & 7) & 1] == sorted(final)
    assert seen_by_store(store) == expected(store.db.conn)
    assert store.total_cost() == expected(store.db.conn)["sums"]["cost_nano"]


# -- in process: every write path, in random orders ------------------------------------------

# Twelve seqs over five blocks of 4,096 (the `blocks` the resume reads).
_seq = st.integers(0, 11).map(lambda k: k * 1500)
_outcome = st.builds(
    lambda seq, cid, model, status, cost, tokens, key, cut: Outcome(
        seq=seq,
        custom_id=f"c{cid}",
        model=model,
        status=status,
        error_code="1301" if status == "failed" else None,
        cost_nano=cost,
        prompt_tokens=tokens,
        completion_tokens=tokens and tokens * 2,
        response=_cut(cut) if status == "succeeded" else None,
        key_fp=key,
    ),
    seq=_seq,
    # ids collide across seqs at times: a REPLACE then drops the other row as well
    cid=st.integers(0, 13),
    model=st.sampled_from([None, "glm-4", "glm-4.5-air"]),
    status=st.sampled_from(["succeeded", "failed", "submitting", "submitted"]),
    cost=st.one_of(st.none(), st.integers(0, 10**9)),
    tokens=st.one_of(st.none(), st.integers(0, 5000)),
    key=st.sampled_from([None, "fp-a", "fp-b"]),
    cut=st.booleans(),
)
_op = st.one_of(
    st.tuples(st.just("record"), st.lists(_outcome, min_size=1, max_size=6)),
    st.tuples(st.just("archive"), st.lists(_seq, max_size=4, unique=True)),
    st.tuples(st.just("discard"), st.lists(_seq, max_size=3)),
    st.tuples(st.just("update"), _seq),
    st.tuples(st.just("reopen"), st.just(None)),
)


@hsettings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=st.lists(_op, min_size=1, max_size=12))
def test_totals_equal_the_rows_after_any_writes(tmp_path: Path, ops: list[Any]) -> None:
    path = tmp_path / f"c-{time.monotonic_ns()}.sqlite"
    store = Store(path)
    run = 1
    try:
        for name, arg in ops:
            if name == "record":
                store.record(arg)
            elif name == "archive":
                run += 1
                store.archive(arg, run)
            elif name == "discard":
                store.discard(arg)
            elif name == "update":  # no runner path updates a row in place; a tool might
                with store.db.conn as conn:
                    conn.execute(
                        "UPDATE rows SET cost_nano = COALESCE(cost_nano, 0) + 7, "
                        "status = 'failed', error_code = 'x' WHERE seq = ?",
                        [arg],
                    )
            else:
                store.close()
                store = Store(path)
            check(store)
    finally:
        store.close()


def test_merged_shards_and_an_old_checkpoint_are_counted(tmp_path: Path) -> None:
    shard = Store(tmp_path / "shard.sqlite")
    shard.record([Outcome(seq=i, custom_id=f"s{i}", model="m", status="succeeded",
                          cost_nano=3, response=_cut(i % 2 == 0)) for i in range(5)])  # fmt: skip
    shard.close()
    store = Store(tmp_path / "main.sqlite")
    store.record([Outcome(seq=100, custom_id="s1", model="m", status="failed", error_code="e")])
    conn = store.db.conn
    conn.execute("ATTACH DATABASE ? AS shard", [str(tmp_path / "shard.sqlite")])
    with conn:  # as runner/ray_engine/merge.py copies a shard in
        conn.execute("INSERT OR REPLACE INTO rows SELECT * FROM shard.rows")
        store.add_totals_of("shard.rows")
    conn.execute("DETACH DATABASE shard")
    check(store)
    assert store.summary()["succeeded"] == 5 and store.truncated_rows() == 3
    # A checkpoint from before the totals: they are summed once, when it is opened to write.
    with conn:
        conn.execute("DROP TABLE totals")
        conn.execute("DROP TABLE blocks")
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"):
            conn.execute(f"DROP TRIGGER {name}")
    store.close()
    old = Store(tmp_path / "main.sqlite")
    check(old)
    old.record([Outcome(seq=6, custom_id="s6", model="m", status="succeeded", cost_nano=1)])
    check(old)
    old.close()


def test_whole_blocks_and_their_ragged_edges(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite")
    store.record([Outcome(seq=i, custom_id=f"c{i}", status="succeeded") for i in range(9000)])
    store.record([Outcome(seq=9000, custom_id="c9000", status="submitted")])
    check(store)  # blocks 0 and 1 whole, 2 ragged
    store.discard([5, 4100])
    check(store)
    bits = store.done_bitmap(9001)
    assert bits[0] == 0xFF - (1 << 5) and not bits[9000 >> 3] >> (9000 & 7) & 1
    store.close()


# -- as a user runs it: kill -9, resume, retry ------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        env=h.runner_env(), capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def _status_matches(out: Path) -> dict[str, Any]:
    """`runner status --json` against sums over the checkpoint's rows."""
    status = h.status_json(out)
    with sqlite3.connect(out / "checkpoint.sqlite") as db:
        want = expected(db)
    assert status["succeeded"] == want["succeeded"] and status["failed"] == want["failed"]
    assert status["error_codes"] == want["codes"]
    for k in _SUMS[1:]:
        assert status["tokens"][k] == want["sums"][k], k
    assert Decimal(status["cost"]["total_exact"]) * NANO == want["sums"]["cost_nano"]
    assert status["truncated"] == want["truncated"]
    return status


def test_status_totals_after_kill_resume_and_retry(tmp_path: Path) -> None:
    spec, out = tmp_path / "spec.jsonl", tmp_path / "out"
    h.mixed_spec(spec, 400, 6, seed=27)  # chat, videos, 1301 rows and broken lines
    with SimProcess("--latency", "0.02") as sim:
        proc = subprocess.Popen(
            h.runner_cmd(spec, out, sim.base_url, "--concurrency", "20"),
            env=h.runner_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while h.observe(out).statuses.get("succeeded", 0) < 100 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        killed = _status_matches(out)
        assert 0 < killed["succeeded"] < 400

        r = _cli("resume", str(out), "--no-progress")
        assert r.returncode == 1, r.stderr  # the 1301 rows and broken lines stay failed
        done = _status_matches(out)
        assert done["pending"] == 0 and done["error_codes"]["1301"] > 0

        sim.configure(code_markers=False)  # the platform mended: the 1301 rows succeed now
        r = _cli("retry", str(out), "--code", "1301")
        assert r.returncode == 1, r.stderr  # the broken lines are still invalid
        again = _status_matches(out)
        assert "1301" not in again["error_codes"]
        # The superseded attempts stay on the bill: tokens went up by what was sent again.
        assert again["tokens"]["prompt_tokens"] > done["tokens"]["prompt_tokens"]
