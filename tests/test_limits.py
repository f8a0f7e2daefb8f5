"""The adaptive tier's policy, step by step on an injected clock (no sleeping, no HTTP).

A small fluid model of the platform stands in for traffic: each half-second window the
limiter's level is offered in full, the platform serves up to its real limit and answers
1302 to the rest. The end-to-end figures (429s a second against the simulator) are the
benchmark's business (`bench/run_bench.py`, rate-limit mode), not these tests'.
"""

from __future__ import annotations

import anyio
import pytest

from runner.limits import PROBE_FIRST, PROBE_MAX, PROBE_START, AdaptiveLimiter

WINDOW = 0.5


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def window(lim: AdaptiveLimiter, clock: Clock, real: int) -> int:
    """Half a second of answers at the limiter's level; returns the 1302s it got."""
    clock.now += WINDOW
    level = lim.current
    ok, over = min(level, real), max(0, level - real)
    # Interleave successes and refusals evenly, as a pool of workers would see them.
    events = sorted([(i / ok, True) for i in range(ok)] + [(i / over, False) for i in range(over)])
    for _, success in events:
        if success:
            lim.succeeded(0.2)
        else:
            lim.rate_limited(in_flight=level)
    return over


def run(lim: AdaptiveLimiter, clock: Clock, real: int, seconds: float) -> list[int]:
    return [window(lim, clock, real) for _ in range(int(seconds / WINDOW))]


def converged_after(refusals: list[int], clean: int = 20) -> float | None:
    """Seconds until `clean` windows in a row without a 1302 (ten seconds by default)."""
    for i in range(len(refusals) - clean + 1):
        if not any(refusals[i : i + clean]):
            return i * WINDOW
    return None


def test_a_limit_below_the_tier_converges_and_then_probes_rarely() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(300, clock=clock)
    refusals = run(lim, clock, real=100, seconds=300)
    conv = converged_after(refusals)
    assert conv is not None and conv <= 10
    after = refusals[int(conv / WINDOW) :]
    probes = sum(1 for x in after if x)
    # Waits of 15, 30, 60, 120 s: at most five probes in the remaining ~290 s ...
    assert probes <= 5
    # ... each a window one slot over, so far under one 429 a second.
    assert sum(after) / (len(after) * WINDOW) < 0.1
    # The level holds at the limit itself, not below it.
    assert lim.ceiling == 101
    assert all(x == 0 for x in refusals[-10:]) and lim.current == 100
    assert lim.probe_wait > PROBE_FIRST


def test_probe_waits_double_per_refusal_and_stop_at_the_maximum() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(300, clock=clock)
    run(lim, clock, real=100, seconds=20)
    waits = []
    for _ in range(3000):
        before = lim.probe_wait
        window(lim, clock, real=100)
        if lim.probe_wait != before:
            waits.append(lim.probe_wait)
    assert waits[:4] == [PROBE_FIRST * 2, PROBE_FIRST * 4, PROBE_FIRST * 8, PROBE_FIRST * 16]
    assert max(waits) == PROBE_MAX


def test_late_refusals_of_one_probe_count_once() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(300, clock=clock)
    run(lim, clock, real=100, seconds=20)
    assert (lim.ceiling, lim.current) == (101, 100)
    wait = lim.probe_wait
    # Answers to requests sent at the probed level arrive after the cut back to 100.
    clock.now += WINDOW
    for _ in range(100):
        lim.succeeded(0.2)
    lim.rate_limited(in_flight=101)
    clock.now += WINDOW
    for _ in range(100):
        lim.succeeded(0.2)
    assert lim.probe_wait == wait and lim.current == 100


def test_a_lower_limit_is_a_new_ceiling_with_a_fresh_wait() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(300, clock=clock)
    run(lim, clock, real=100, seconds=60)
    assert lim.probe_wait > PROBE_FIRST
    refusals = run(lim, clock, real=60, seconds=10)
    assert (lim.ceiling, lim.current) == (61, 60)
    assert lim.probe_wait == PROBE_FIRST
    refusals += run(lim, clock, real=60, seconds=20)
    conv = converged_after(refusals)
    assert conv is not None and conv <= 10


def test_a_raised_limit_is_found_at_the_next_probe() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(300, clock=clock)
    run(lim, clock, real=100, seconds=20)
    assert lim.current == 100
    run(lim, clock, real=200, seconds=PROBE_FIRST * 2 + 15)
    assert lim.current >= 190
    assert lim.ceiling is None or lim.ceiling > 190


def test_refusals_sent_before_a_cut_do_not_cut_again() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(300, clock=clock)
    for _ in range(100):
        lim.succeeded(0.2)
        lim.rate_limited(in_flight=300)
        lim.rate_limited(in_flight=300)
    clock.now += WINDOW
    lim.rate_limited(in_flight=300)  # the window closes at its first answer after 0.5 s
    cut = lim.current
    assert 150 < cut < 250 and lim.ceiling == 300
    # Next window: only refusals of requests still out from the old level (250 on the wire).
    for _ in range(cut):
        lim.succeeded(0.2)
    clock.now += WINDOW
    lim.rate_limited(in_flight=250)
    assert lim.current == cut and lim.ceiling == 250


def test_a_few_busy_429s_cost_nothing_and_a_storm_at_most_half() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(200, clock=clock)
    clock.now += WINDOW
    for i in range(200):
        lim.succeeded(0.2)
        if i % 50 == 0:
            lim.rate_limited(over_limit=False)
    assert lim.current == 200
    for _ in range(10):
        clock.now += WINDOW
        for _ in range(lim.current):
            lim.rate_limited(over_limit=False)
    assert lim.current == 100
    assert lim.ceiling is None  # busy refusals say nothing about the account's limit


@pytest.mark.anyio
async def test_slots_go_to_waiters_in_turn_and_a_cancelled_waiter_gives_way() -> None:
    lim = AdaptiveLimiter(1)
    lim.acquire_nowait()
    got: list[str] = []

    async def waiter(name: str) -> None:
        async with lim:
            got.append(name)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, "a")
        async with anyio.create_task_group() as inner:
            inner.start_soon(waiter, "b")
            tg.start_soon(waiter, "c")
            await anyio.wait_all_tasks_blocked()
            inner.cancel_scope.cancel()  # b leaves the queue before its turn
        lim.release()
    assert got == ["a", "c"]
    lim.acquire_nowait()  # the slot came back
    lim.release()


@pytest.mark.anyio
async def test_raising_the_limit_wakes_waiters() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(4, clock=clock)
    lim._tokens.total = 1
    lim.acquire_nowait()
    done = anyio.Event()

    async def waiter() -> None:
        await lim.acquire()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        assert not done.is_set()
        lim._tokens.total = 2
        await done.wait()


@pytest.mark.anyio
async def test_a_cancelled_acquire_keeps_no_slot() -> None:
    lim = AdaptiveLimiter(1)
    with anyio.CancelScope() as scope:
        scope.cancel()
        await lim.acquire()  # a free slot, but the scope is cancelled at the checkpoint
    lim.acquire_nowait()  # so the slot is still free


# --- a server that queues (vLLM, llama.cpp): S slots, service L, a FIFO in front ---------


def queued_window(
    lim: AdaptiveLimiter, clock: Clock, slots: int, service: float, timeout: float = 5.0
) -> tuple[float, int]:
    """Half a second at the limiter's level against a queueing server: the level's answers
    arrive `slots / service` a second, each after `level / slots` services; an answer
    later than `timeout` is a timeout. Returns (latency, timeouts)."""
    clock.now += WINDOW
    level = lim.current
    latency = max(service, level * service / slots)
    answers = max(1, round(min(level, slots) / service * WINDOW))
    timeouts = 0
    for _ in range(answers):
        if latency > timeout:
            timeouts += 1
            lim.timed_out(clock.now - timeout)
        else:
            lim.succeeded(latency)
    return latency, timeouts


def test_a_queueing_server_of_unknown_capacity_is_found_and_held() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(50, clock=clock, probe=True)
    assert lim.current == PROBE_START  # not the user's guess of 50: that would all queue
    seen = [queued_window(lim, clock, slots=4, service=1.0) for _ in range(240)]
    assert not any(t for _, t in seen)  # never deep enough to time out
    levels = []
    for _ in range(120):
        queued_window(lim, clock, slots=4, service=1.0)
        levels.append(lim.current)
    # Enough to keep the 4 slots busy, not so many that answers wait long for a slot.
    assert min(levels) >= 4
    assert max(levels) <= 8
    assert sorted(levels)[len(levels) // 2] <= 6


def test_a_fast_server_lets_the_slow_start_reach_the_cap() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(200, clock=clock, probe=True)
    for _ in range(40):
        queued_window(lim, clock, slots=500, service=0.2)
    assert lim.current == 200


def test_timeouts_lower_the_limit_of_a_tiered_provider_too() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(50, clock=clock)  # Z.ai: starts at the tier, no latency signal
    assert lim.current == 50
    for _ in range(40):
        queued_window(lim, clock, slots=4, service=1.0)
    assert lim.current <= 20  # 20 in flight answer within the 5 s timeout
    assert lim.ceiling is not None


def test_slow_answers_alone_do_not_move_a_tiered_provider() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(50, clock=clock)
    for _ in range(40):
        queued_window(lim, clock, slots=25, service=1.0)  # latency 2 s, never a timeout
    assert lim.current == 50


def test_timeouts_of_requests_sent_before_a_cut_do_not_cut_again() -> None:
    clock = Clock()
    lim = AdaptiveLimiter(16, clock=clock)
    clock.now += 1.0
    for _ in range(16):
        lim.timed_out(0.0)  # nothing answered in time: halved
    assert lim.current == 8
    clock.now += 1.0
    for _ in range(16):
        lim.timed_out(0.5)  # sent under the old limit, before the cut
    assert lim.current == 8
    for _ in range(16):
        lim.timed_out(clock.now)
    assert lim.current == 4
