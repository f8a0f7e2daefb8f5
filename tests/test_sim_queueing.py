"""The simulator's queueing mode: S slots, a FIFO in front, and abandoned work still spent."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest
from simproc import SimProcess
from test_sim_faults import AUTH, chat_body, client_for, fire

from runner.sim import SimConfig, Simulator

pytestmark = pytest.mark.anyio


async def test_requests_past_the_slots_wait_in_turn() -> None:
    config = SimConfig(queue_slots=2, service_seconds=0.2)
    async with Simulator(config) as sim, client_for(sim) as client:
        began = time.monotonic()
        responses = await fire(client, 6)
        took = time.monotonic() - began
        stats = sim.stats()
    assert all(r.status_code == 200 for r in responses)
    # Three rounds of two: queued, not refused, and not served faster than the slots allow.
    assert 0.55 < took < 1.5
    assert stats["server_work"]["started"] == 6
    assert stats["server_work"]["finished"] == 6
    assert stats["server_work"]["cancelled"] == 0


async def test_a_client_that_times_out_still_costs_the_server_its_work() -> None:
    config = SimConfig(queue_slots=1, service_seconds=0.3)
    async with Simulator(config) as sim, client_for(sim, timeout=0.1) as client:
        with pytest.raises(httpx.TimeoutException):
            await client.post("chat/completions", json=chat_body(), headers=AUTH)
        await anyio.sleep(0.05)
        # The server is still busy with the request nobody waits for.
        assert sim.stats()["server_work"]["busy"] == 1
        await anyio.sleep(0.4)
        stats = sim.stats()
    assert stats["server_work"]["started"] == 1
    assert stats["server_work"]["cancelled"] == 1
    assert stats["server_work"]["busy"] == 0
    assert stats["statuses"].get("499") == 1


async def test_abandon_cost_frees_the_slot_early() -> None:
    config = SimConfig(queue_slots=1, service_seconds=1.0, abandon_cost=0.0)
    async with Simulator(config) as sim, client_for(sim, timeout=0.1) as client:
        with pytest.raises(httpx.TimeoutException):
            await client.post("chat/completions", json=chat_body(), headers=AUTH)
        await anyio.sleep(0.2)
        assert sim.stats()["server_work"]["busy"] == 0


async def test_queue_mode_is_a_runtime_knob() -> None:
    async with Simulator() as sim:
        sim.update(queue_slots=3, service_seconds=0.01)
        assert sim.state.queue is not None and sim.state.queue.slots == 3
        sim.update(queue_slots=None)
        assert sim.state.queue is None
        with pytest.raises(ValueError, match="abandon_cost"):
            sim.update(abandon_cost=2)


def test_the_sim_command_serves_in_queueing_mode() -> None:
    with SimProcess("--queue-slots", "2", "--service-seconds", "0.1", "--json-schema") as sim:
        config = sim.get(sim.root + "/_sim/config")
    assert config["queue_slots"] == 2
    assert config["service_seconds"] == 0.1
    assert config["json_schema"] is True
