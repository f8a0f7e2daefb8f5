"""The body budget: rows with local files hold at most so many bytes of bodies at once,
whatever the concurrency; rows without files never wait on it."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
from media import png
from test_localfiles import image_row

from jobs import settings_for, write_spec
from runner import run_job
from runner.bodybudget import BodyBudget, held_size
from runner.sim import SimConfig, Simulator

pytestmark = pytest.mark.anyio
IMAGE_BYTES = 300_000


async def test_budget_lets_in_what_fits_in_order_and_an_oversized_body_alone() -> None:
    budget = BodyBudget(100)
    order: list[str] = []
    inside = 0
    most = 0

    async def borrow(name: str, n: int, delay: float) -> None:
        nonlocal inside, most
        await anyio.sleep(delay)
        async with budget.hold(n):
            inside += n
            most = max(most, inside)
            order.append(name)
            await anyio.sleep(0.05)
            inside -= n

    async with anyio.create_task_group() as tg:
        tg.start_soon(borrow, "a", 60, 0)
        tg.start_soon(borrow, "b", 60, 0.01)  # waits for a
        tg.start_soon(borrow, "big", 250, 0.02)  # over the budget: alone, after b
        tg.start_soon(borrow, "c", 10, 0.03)  # fits beside b, but waits its turn
    assert order == ["a", "b", "big", "c"]
    assert most == 250 and budget.held == 0


async def test_cancelled_waiter_gives_nothing_away() -> None:
    budget = BodyBudget(100)
    async with budget.hold(80):
        with anyio.move_on_after(0.05):
            async with budget.hold(50):
                raise AssertionError("no room: it must wait")
    assert budget.held == 0
    async with budget.hold(100):
        assert budget.held == 100


async def test_rows_with_files_stay_within_the_budget(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    rows = []
    for i in range(30):
        (tmp_path / "img" / f"{i}.png").write_bytes(png(i) + os.urandom(IMAGE_BYTES))
        rows.append(image_row(f"p{i}", f"img/{i}.png"))
    spec = write_spec(tmp_path / "spec.jsonl", rows)
    weight = held_size(4 * -(-(IMAGE_BYTES + len(png(0))) // 3) + 64)
    cap = 4 * 1024 * 1024 // weight  # 4 MiB: five such bodies at once, not twenty
    async with Simulator(SimConfig(latency=0.1)) as sim:
        settings = settings_for(
            tmp_path / "out", spec, sim.base_url, concurrency=20, body_budget_mb=4
        )
        result = await run_job(settings, handle_signals=False)
        stats = sim.stats()
    assert result.exit_code == 0, result.message
    assert len(stats["files"]) == 30
    assert 1 < stats["peak_in_flight"] <= cap, (stats["peak_in_flight"], cap)
