"""Shards without Ray: the plan by position, reading a window in place, the slot bank, and
two shards' lanes settling with one bank in one process."""

from __future__ import annotations

import functools
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import anyio
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner import JobResult, Settings, run_job
from runner.outcome import COLUMNS
from runner.ray_engine.plan import plan_shards
from runner.ray_engine.slots import STALE, LeasedLanes, Report, SlotBank, fair_shares
from runner.sim import Simulator
from runner.spec import Request, read_spec
from tests.jobs import chat_row, settings_for, write_spec


def _items(spec: Path, window: object = None) -> list[Request]:
    return [i for batch in read_spec(spec, window=window) for i in batch]  # type: ignore[arg-type]


def test_jsonl_windows_are_whole_lines_and_keep_the_spec_s_line_numbers(tmp_path: Path) -> None:
    rows: list[dict[str, object] | bytes] = []
    for i in range(50):
        rows.append(chat_row(i))
        if i % 7 == 0:
            rows.append(b"   ")  # blank lines are not rows, and shift the line numbers
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    whole = _items(spec)
    windows = plan_shards(spec, 3)
    assert [w.rows for w in windows] == [16, 17, 17]
    parts = [_items(spec, w) for w in windows]
    for w, part in zip(windows, parts, strict=True):
        assert [i.seq for i in part] == list(range(w.rows))  # a shard counts from 0
        assert part[0].line == w.first_line
    merged = [
        (w.first_seq + i.seq, i.custom_id, i.line)
        for w, p in zip(windows, parts, strict=True)
        for i in p
    ]
    assert merged == [(i.seq, i.custom_id, i.line) for i in whole]


def test_derived_custom_ids_are_the_spec_s_in_every_shard(tmp_path: Path) -> None:
    rows = [{k: v for k, v in chat_row(i).items() if k != "custom_id"} for i in range(9)]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    ids = [i.custom_id for w in plan_shards(spec, 4) for i in _items(spec, w)]
    assert ids == [i.custom_id for i in _items(spec)]


def test_more_shards_than_rows_makes_no_empty_shard(tmp_path: Path) -> None:
    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(0), chat_row(1)])
    assert [w.rows for w in plan_shards(spec, 8)] == [1, 1]


def test_parquet_windows_are_runs_of_row_groups(tmp_path: Path) -> None:
    spec = tmp_path / "spec.parquet"
    table = pa.table(
        {
            "custom_id": [f"row-{i}" for i in range(35)],
            "model": ["glm-4.5-air"] * 35,
            "messages": [[{"role": "user", "content": f"q {i}"}] for i in range(35)],
        }
    )
    pq.write_table(table, spec, row_group_size=10)
    windows = plan_shards(spec, 2)
    assert [(w.start, w.end, w.first_seq, w.rows) for w in windows] == [
        (0, 2, 0, 20),
        (2, 4, 20, 15),
    ]
    ids = []
    for w in windows:
        part = [i for batch in read_spec(spec, window=w, fmt=None) for i in batch]
        assert [i.seq for i in part] == list(range(w.rows))
        assert part[0].line == w.first_seq + 1
        ids += [i.custom_id for i in part]
    assert ids == [f"row-{i}" for i in range(35)]


def test_fair_shares_split_by_demand() -> None:
    assert fair_shares(40, {0: 48, 1: 48, 2: 48, 3: 48}) == {0: 10, 1: 10, 2: 10, 3: 10}
    assert fair_shares(40, {0: 5, 1: 48, 2: 0}) == {0: 5, 1: 35, 2: 0}
    assert fair_shares(3, {0: 9, 1: 9}) == {0: 2, 1: 1}
    assert fair_shares(10, {}) == {}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # which shard syncs
            st.integers(0, 60),  # what it wants
            st.floats(0, 1),  # what fraction of its free slots it gives back
            st.booleans(),  # whether it saw a 1302
        ),
        max_size=80,
    )
)
def test_the_bank_never_lends_more_than_the_cap(steps: list[tuple[int, int, float, bool]]) -> None:
    now = [0.0]
    bank = SlotBank(clock=lambda: now[0], stale=float("inf"))  # every shard here is alive
    held = [0, 0, 0, 0]
    for shard, wanted, back, refused in steps:
        now[0] += 0.3
        give = int(held[shard] * back)
        held[shard] -= give
        reply = bank.sync(shard, {"k/m": (40, give, wanted, int(refused))})
        grant, _target = reply["lanes"]["k/m"]
        held[shard] += grant
        assert sum(held) <= 40
        assert sum(held) == bank.stats()["k/m"]["held"]
        assert 1 <= bank.level["k/m"] <= 40
    for shard in range(4):
        bank.reset(shard)
    assert bank.stats().get("k/m", {"held": 0})["held"] == 0


def test_a_silent_shard_s_slots_go_to_the_others_and_it_starts_again_from_nothing() -> None:
    # Its node was lost: until its retry starts it would hold them, and the retry may be
    # waiting for a CPU the other shards hold while they wait for its slots.
    now = [0.0]
    bank = SlotBank(clock=lambda: now[0])
    assert bank.sync(0, {"k/m": (8, 0, 8, 0)})["lanes"]["k/m"] == (8, 8)
    for _ in range(int(STALE / 0.5)):
        now[0] += 0.5
        reply = bank.sync(1, {"k/m": (8, 0, 8, 0)})
        assert reply["lanes"]["k/m"][0] == 0 and not reply["revoked"]  # shard 0 has them all
    now[0] += 0.5
    assert bank.sync(1, {"k/m": (8, 0, 8, 0)})["lanes"]["k/m"] == (8, 8)  # 0 was silent
    assert bank.stats()["k/m"]["held"] == 8
    # Shard 0 was only stuck: it learns it holds nothing, and waits for what the bank frees.
    now[0] += 0.5
    reply = bank.sync(0, {"k/m": (8, 0, 8, 0)})
    assert reply["revoked"] and reply["lanes"]["k/m"][0] == 0
    assert not bank.sync(0, {"k/m": (8, 0, 8, 0)})["revoked"]  # told once


def test_a_bank_that_was_not_answering_takes_nobody_s_slots() -> None:
    now = [0.0]
    bank = SlotBank(clock=lambda: now[0])
    bank.sync(0, {"k/m": (8, 0, 4, 0)})
    bank.sync(1, {"k/m": (8, 0, 4, 0)})
    now[0] += 3 * STALE  # the bank's own process stalled; both shards waited on it
    assert not bank.sync(1, {"k/m": (8, 0, 4, 0)})["revoked"]
    assert not bank.sync(0, {"k/m": (8, 0, 4, 0)})["revoked"]
    assert bank.stats()["k/m"]["held"] == 8


def test_a_custom_id_twice_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    import pytest

    from runner.errors import UsageError

    spec = write_spec(tmp_path / "spec.jsonl", [chat_row(0), chat_row(1), chat_row(0)])
    with pytest.raises(UsageError, match="lines 1 and 3"):
        plan_shards(spec, 2)


class _LocalLanes(LeasedLanes):
    """A shard's lanes settling with an in-process bank instead of a Ray actor."""

    async def _sync(self, reports: dict[str, Report]) -> dict[str, Any]:
        return cast(dict[str, Any], self.bank.sync(self.shard, reports, self._fatal()))


@pytest.mark.anyio
async def test_two_shards_each_holding_one_model_do_not_deadlock(
    tmp_path: Path, sim: Simulator
) -> None:
    # Each shard's spec opens with a reader's batch (1,024 rows) of one model, so the bank
    # lends that model's every slot to it before the shard meets the other model; that
    # model's rows then fill the shard's stream and its reader waits. When workers kept
    # their slots while waiting for rows, neither shard gave back what the other needed.
    bank = SlotBank()
    first, second = "glm-4.5-air", "glm-4.7-flash"
    jobs = []
    for shard, (lead, other) in enumerate(((first, second), (second, first))):
        rows = [chat_row(i, model=lead) for i in range(1100)]
        rows += [chat_row(i, model=(lead, other)[i % 2]) for i in range(1100, 1300)]
        spec = write_spec(tmp_path / f"spec-{shard}.jsonl", rows)
        job = settings_for(tmp_path / f"out-{shard}", spec, sim.base_url, concurrency=4)
        lanes = functools.partial(_LocalLanes, bank=bank, shard=shard, tick=0.005)
        jobs.append((job, lanes))
    results: list[JobResult] = []

    async def shard(job: Settings, lanes: Any) -> None:
        results.append(await run_job(job, handle_signals=False, lanes=lanes))

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            for job, lanes in jobs:
                tg.start_soon(shard, job, lanes)
    assert [r.exit_code for r in results] == [0, 0]
    assert sim.state.ledger.peak_in_flight <= 8  # 4 per model over both shards


def test_a_shard_s_cpu_share_fits_every_shard_on_the_nodes() -> None:
    from runner.ray_engine.driver import shard_cpus

    assert shard_cpus([2.0, 2.0], 4) == 1.0
    assert shard_cpus([1.0, 2.0], 4) == 0.6666  # 1 + 3; the old CPUs / shards placed 3
    assert shard_cpus([3.0], 4) == 0.75
    assert shard_cpus([16.0], 2) == 1.0
    for nodes, n in (([1.0, 2.0], 4), ([3.0, 0.5], 7), ([0.0, 2.0], 5)):
        x = shard_cpus(nodes, n)
        assert sum(int(c / x + 1e-9) for c in nodes) >= n


@pytest.mark.anyio
async def test_the_inbox_answers_a_hello_after_the_batches_before_it() -> None:
    import asyncio

    from runner.ray_engine.inbox import Batch, Inbox

    inbox = Inbox(cap=1000)
    await inbox.put(Batch(0, rows=[(0, "row-0")]))
    hello = asyncio.ensure_future(inbox.hello(1, True))
    await asyncio.sleep(0)
    mail = await inbox.take(0, 0)
    assert [b.rows for b in mail.batches] == [[(0, "row-0")]]
    [(shard, serial, wants)] = mail.hellos
    assert (shard, wants) == (1, True)
    # The driver was stopped before it merged: the next take hands the same again.
    again_mail = await inbox.take(0, 0)
    assert [b.rows for b in again_mail.batches] == [[(0, "row-0")]]
    assert again_mail.hellos == mail.hellos
    assert (await inbox.take(mail.last, 0)).batches == []  # merged: forgotten
    # The shard's worker died waiting and its retry asks again: the first answer is stale.
    again = asyncio.ensure_future(inbox.hello(1, False))
    await asyncio.sleep(0)
    await inbox.answer(1, serial, [(5, "old")])
    with pytest.raises(asyncio.CancelledError):
        await hello
    assert not again.done()
    [(_, newer, wants)] = (await inbox.take(mail.last, 0)).hellos
    assert not wants
    await inbox.answer(1, newer, [])
    assert await again == []
    assert (await inbox.take(mail.last, 0)).hellos == []


@pytest.mark.anyio
async def test_a_full_inbox_holds_the_shards_back_until_the_driver_merges() -> None:
    import asyncio

    from runner.ray_engine.inbox import Batch, Inbox

    inbox = Inbox(cap=200)
    await inbox.put(Batch(0, rows=[(0, "x" * 150)]))  # one batch always fits
    second = asyncio.ensure_future(inbox.put(Batch(1, rows=[(0, "y" * 150)])))
    await asyncio.sleep(0.05)
    assert not second.done()
    mail = await inbox.take(0, 0)
    assert [b.shard for b in mail.batches] == [0]
    await asyncio.sleep(0.05)
    assert not second.done()  # taken is not merged: the batch still holds its room
    # Merged: its room goes to the waiting batch, which this very take brings.
    mail = await inbox.take(mail.last, 0)
    await asyncio.wait_for(second, 1)
    assert [b.shard for b in mail.batches] == [1]
    # A take waits its time out whatever arrives, except a shard's hello.
    mail = await inbox.take(mail.last, 0)
    assert mail.batches == []
    started = time.monotonic()
    await inbox.put(Batch(2, rows=[(0, "z")]))
    assert [b.shard for b in (await inbox.take(mail.last, 0.1)).batches] == [2]
    assert time.monotonic() - started >= 0.09
    hello = asyncio.ensure_future(inbox.hello(3, False))
    started = time.monotonic()
    assert [k for k, _, _ in (await inbox.take(mail.last, 5)).hellos] == [3]
    assert time.monotonic() - started < 1
    hello.cancel()


@pytest.mark.anyio
async def test_shipped_rows_merge_into_the_job_and_a_shard_started_elsewhere_skips_them(
    tmp_path: Path, sim: Simulator
) -> None:
    from runner.lifecycle import checkpoint_path
    from runner.ray_engine.merge import apply, held_rows
    from runner.ray_engine.shipper import Shipper, prepare
    from runner.store import Store

    spec = write_spec(tmp_path / "spec.jsonl", (chat_row(i) for i in range(60)))
    windows = plan_shards(spec, 2)
    job = Store(checkpoint_path(tmp_path / "job"))
    batches: list[Any] = []

    async def shard(k: int, out: Path, held: list[Any]) -> JobResult:
        prepare(out, held)
        settings = replace(settings_for(out, spec, sim.base_url), window=windows[k])
        shipper = Shipper(out, k, batches.append, every=0.01)
        try:
            with shipper.running():
                return await run_job(settings, handle_signals=False)
        finally:
            shipper.close()

    try:
        for k in range(2):
            result = await shard(k, tmp_path / f"node-a-{k}", [])
            assert result.exit_code == 0, result.message
        assert sim.state.ledger.requests["chat/completions"] == 60
        apply(job, tmp_path / "job", windows, batches)
        ids = [r[0] for r in job.db.execute("SELECT custom_id FROM rows ORDER BY seq")]
        assert ids == [f"row-{i}" for i in range(60)]
        # The second shard's node is lost; its retry on another node is told what the job
        # holds, sends nothing, and ships nothing back.
        batches.clear()
        held = held_rows(job, windows[1])
        assert len(held) == 30 and {h[0] for h in held} == set(range(30))  # its own seqs
        again = await shard(1, tmp_path / "node-b-1", held)
        assert again.exit_code == 0 and again.summary["succeeded"] == 30
        assert sim.state.ledger.requests["chat/completions"] == 60
        assert not [b for b in batches if b.rows]
        # Answers stay with the job: the shard was told only that its rows are done.
        assert all(h[list(COLUMNS).index("response")] is None for h in held)
    finally:
        job.close()


def test_a_shard_checks_its_window_against_the_plan_reading_only_that(tmp_path: Path) -> None:
    from runner.errors import UsageError
    from runner.lifecycle import check_spec

    rows = [chat_row(i) for i in range(30)]
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    windows = plan_shards(spec, 3)
    assert all(w.digest for w in windows)
    # Another node's copy whose last rows differ: only the last shard can tell, and does.
    rows[25] = chat_row(99)
    copy = write_spec(tmp_path / "copy.jsonl", rows)
    for k, w in enumerate(windows):
        settings = replace(settings_for(tmp_path / f"o{k}", copy, "http://x/v4"), window=w)
        if k < 2:
            assert check_spec(settings) == w.digest
        else:
            with pytest.raises(UsageError, match="line 21 differ"):
                check_spec(settings)
    # Parquet: a window's digest covers its row groups' bytes.
    pspec, pcopy = tmp_path / "spec.parquet", tmp_path / "copy.parquet"
    for path, last in ((pspec, "q 19"), (pcopy, "changed")):
        table = pa.table(
            {
                "custom_id": [f"row-{i}" for i in range(20)],
                "model": ["glm-4.5-air"] * 20,
                "messages": [
                    [{"role": "user", "content": last if i == 19 else f"q {i}"}] for i in range(20)
                ],
            }
        )
        pq.write_table(table, path, row_group_size=10)
    first, second = plan_shards(pspec, 2)
    for w, same in ((first, True), (second, False)):
        settings = replace(settings_for(tmp_path / "p", pcopy, "http://x/v4"), window=w)
        if same:
            assert check_spec(settings) == w.digest
        else:
            with pytest.raises(UsageError, match="not the one this job was planned on"):
                check_spec(settings)
