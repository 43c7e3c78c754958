"""The scheduler on a fake clock and a fake driver: leases, swaps, batching with a bound, idle unloads.

The tests run with ``swap_delay=0`` (an idle model in the way goes at once) unless they test that delay."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from ark.arbiter.catalog import Entry
from ark.arbiter.drivers import DriverError
from ark.arbiter.leases import Lease
from ark.arbiter.policy import GB, ModelInfo, Priority
from ark.arbiter.scheduler import Arbiter
from ark.errors import EngineDown, ModelWontFit, QueueFull


class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0
        self._changed = asyncio.Event()

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds
        self._changed.set()

    async def wait(self, event: asyncio.Event, deadline: float | None) -> None:
        await asyncio.sleep(0)
        while not event.is_set() and (deadline is None or self.t < deadline):
            self._changed.clear()
            tasks = [asyncio.ensure_future(event.wait()), asyncio.ensure_future(self._changed.wait())]
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()


class FakeDriver:
    """Records what the arbiter asks; a load takes ``load_seconds`` of the fake clock."""

    def __init__(self, clock: FakeClock, load_seconds: float = 5.0) -> None:
        self.clock, self.load_seconds = clock, load_seconds
        self.calls: list[str] = []
        self.hang_next_loads = 0  # the engine hangs in that many of the next loads (Ollama under VRAM pressure)
        self.hung = False
        self.restartable = True
        self.broken: set[str] = set()  # models whose load fails while the engine answers
        self.unload_gate: asyncio.Event | None = None
        self.load_gate: asyncio.Event | None = None

    async def load(self, model: str) -> int | None:
        self.calls.append(f"load {model}")
        if self.hang_next_loads:
            self.hang_next_loads -= 1
            self.hung = True
        if self.hung:
            raise DriverError(f"Ollama /api/generate: TimeoutError (loading {model})")
        if model in self.broken:
            raise DriverError(f"Ollama could not load {model}: HTTP 500: unable to load model")
        if self.load_gate is not None:  # a load that takes a while
            await self.load_gate.wait()
        await asyncio.sleep(0)
        self.clock.advance(self.load_seconds)
        return None

    async def heal(self, model: str) -> set[str] | None:
        if not self.hung:
            return None
        if not self.restartable:
            raise DriverError("engine ollama has no restart_command: it cannot be restarted")
        self.calls.append("restart")
        self.hung = False
        return set(CATALOG)

    async def unload(self, model: str) -> None:
        self.calls.append(f"unload {model}")
        if self.unload_gate is not None:  # an unload that takes a while (Ollama tears the runner down)
            await self.unload_gate.wait()

    async def free_comfy(self) -> None:
        self.calls.append("free comfyui")

    def offloaded(self, model: str) -> tuple[int, int] | None:
        return None


def entry(
    name: str,
    gb: float,
    priority: Priority = Priority.MEDIUM,
    *,
    large: bool = False,
    idle: float = 300.0,
    pinned: bool = False,
) -> Entry:
    return Entry(ModelInfo(name, int(gb * GB), priority, pinned, large), None, idle, "config")


CATALOG = {
    e.info.name: e
    for e in (
        entry("thinker", 23, Priority.HIGH, large=True),
        entry("coder", 15, Priority.MEDIUM, large=True),
        entry("third", 13, Priority.LOW),
        entry("embed", 0.3, Priority.HIGH, pinned=True, idle=0),
        entry("huge", 40, large=True),
        entry("judge", 20, Priority.HIGH),
        entry("tiny", 4, Priority.LOW),
    )
}


def run(test: Callable[[Arbiter, FakeClock, FakeDriver], Coroutine[Any, Any, None]], **kwargs: Any) -> None:
    async def main() -> None:
        clock = FakeClock()
        driver = FakeDriver(clock)
        options = {"capacity": 31 * GB, "max_wait": 30.0, "queue_size": 8, "swap_delay": 0.0, **kwargs}
        arbiter = Arbiter(CATALOG, driver, clock=clock, **options)
        arbiter.start()
        try:
            await asyncio.wait_for(test(arbiter, clock, driver), 10)
        finally:
            await arbiter.close()

    asyncio.run(main())


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_model_is_loaded_then_served_and_never_unloaded_under_a_lease() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        first = await arbiter.acquire("coder")
        assert driver.calls == ["load coder"]
        again = await arbiter.acquire("coder")  # resident: at once, no driver call
        assert driver.calls == ["load coder"] and arbiter.resident["coder"].leases == 2
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))
        clock.advance(10)
        await settle()
        assert not thinker.done() and driver.calls == ["load coder"]  # coder serves two requests
        first.release()
        await settle()
        assert not thinker.done()
        again.release()
        lease = await thinker
        assert driver.calls == ["load coder", "unload coder", "load thinker"]
        assert arbiter.stats.swaps == 1 and lease.model == "thinker"

    run(test)


def test_the_resident_model_keeps_serving_until_the_swap_waited_max_wait() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        held = await arbiter.acquire("coder")
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))
        await settle()
        clock.advance(10)  # within max_wait: coder's batch goes on
        batch = await arbiter.acquire("coder")
        batch.release()
        clock.advance(25)  # the thinker request has now waited 35 s > 30: coder drains
        await settle()
        late = asyncio.ensure_future(arbiter.acquire("coder"))
        await settle()
        assert not late.done() and "coder" in arbiter.draining
        held.release()
        lease = await thinker
        assert lease.model == "thinker" and not late.done()  # the late coder request waits its turn
        lease.release()
        coder_again = await late  # the thinker is idle: coder's request swaps it back
        assert driver.calls == ["load coder", "unload coder", "load thinker", "unload thinker", "load coder"]
        coder_again.release()
        assert max(arbiter.stats.waits) <= 30 + 2 * driver.load_seconds + 10

    run(test)


def test_priority_first_and_ageing_so_nothing_starves() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        held = await arbiter.acquire("thinker")
        low = asyncio.ensure_future(arbiter.acquire("third"))  # does not fit beside the thinker
        await settle()
        clock.advance(70)  # the low request ages past two levels
        await settle()
        high = asyncio.ensure_future(arbiter.acquire("coder"))  # medium, fresh
        await settle()
        held.release()
        first = await low
        (await high).release()  # the coder fits beside the third model: it comes right after
        first.release()
        # the low request that waited 70 s went before the fresh medium one
        assert driver.calls == ["load thinker", "unload thinker", "load third", "load coder"]

    run(test)


def test_a_model_that_can_never_fit_is_refused_with_the_numbers() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        with pytest.raises(ModelWontFit, match=r"model huge needs 40\.0 GB, the GPU has 31\.0 GB"):
            await arbiter.acquire("huge")
        assert arbiter.stats.rejected == 1 and driver.calls == []

    run(test)


def test_a_full_queue_refuses_at_once() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        held = await arbiter.acquire("thinker")
        waiting = [asyncio.ensure_future(arbiter.acquire("coder")) for _ in range(2)]
        await settle()
        with pytest.raises(QueueFull) as refused:
            await arbiter.acquire("coder")
        assert refused.value.status == 429 and refused.value.retry_after == 5.0
        held.release()
        for lease in await asyncio.gather(*waiting):
            lease.release()

    run(test, queue_size=2)


def test_idle_models_unload_after_their_timeout_but_pinned_ones_stay() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        (await arbiter.acquire("embed")).release()
        (await arbiter.acquire("third")).release()
        clock.advance(299)
        await settle()
        assert set(arbiter.resident) == {"embed", "third"}
        clock.advance(2)
        await settle()
        assert set(arbiter.resident) == {"embed"} and driver.calls[-1] == "unload third"

    run(test)


def test_a_cancelled_request_leaves_the_queue() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        held = await arbiter.acquire("thinker")
        gone = asyncio.ensure_future(arbiter.acquire("coder"))
        await settle()
        assert len(arbiter.queue) == 1
        gone.cancel()
        await settle()
        assert arbiter.queue == []
        held.release()
        await settle()
        assert driver.calls == ["load thinker"]  # nobody wants the coder any more

    run(test)


def test_a_lease_is_released_once() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        with await arbiter.acquire("third") as lease:
            assert isinstance(lease, Lease) and arbiter.resident["third"].leases == 1
        lease.release()
        assert arbiter.resident["third"].leases == 0

    run(test)


def test_operator_unloads_wait_for_no_one_and_spare_pinned_and_busy_models() -> None:
    from ark.errors import ModelBusy

    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        (await arbiter.acquire("embed")).release()
        with pytest.raises(ModelBusy, match="pinned"):
            await arbiter.unload("embed")
        held = await arbiter.acquire("third")
        with pytest.raises(ModelBusy, match="serving 1 request"):
            await arbiter.unload("third")
        held.release()
        assert await arbiter.unload("third") is True and "third" not in arbiter.resident
        assert await arbiter.unload("third") is False
        assert driver.calls[-1] == "unload third"

    run(test)


def test_a_memory_hold_makes_room_like_a_request_and_gives_it_back() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        (await arbiter.acquire("thinker")).release()
        coder = await arbiter.acquire("third")  # 23 + 13 > 31: the idle thinker went for it
        assert driver.calls == ["load thinker", "unload thinker", "load third"]
        render = await arbiter.hold("blender", 10 * GB, Priority.HIGH, seconds=60)
        assert arbiter.snapshot().held == 10 * GB and driver.calls[-1] == "load third"  # 13 + 10 fit
        waiting = asyncio.ensure_future(arbiter.hold("comfyui", 12 * GB))  # 13 + 10 + 12 > 31, third busy
        await settle()
        assert not waiting.done() and arbiter.queue[0].hold is not None
        clock.advance(2.5)
        assert arbiter.queue_status() == [{"model": "comfyui", "priority": "medium", "hold": True, "waited_s": 2.5}]
        urgent = asyncio.ensure_future(arbiter.hold("render", 12 * GB, Priority.HIGH))  # came later, goes first
        await settle()
        assert [(w["model"], w["priority"]) for w in arbiter.queue_status()] == [
            ("render", "high"),
            ("comfyui", "medium"),
        ]
        urgent.cancel()
        await settle()
        assert [h["granted"] for h in arbiter.hold_status()] == [True, False]
        coder.release()
        image = await waiting  # the idle third model goes for it
        assert driver.calls[-1] == "unload third" and arbiter.snapshot().held == 22 * GB
        render.release()
        render.release()  # once only
        image.release()
        await settle()
        assert arbiter.holds == {} and arbiter.stats.holds == 2 and arbiter.snapshot().held == 0

    run(test)


def test_a_memory_hold_past_its_time_is_reclaimed() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        hold = await arbiter.hold("blender", 20 * GB, seconds=120)
        assert hold.expires == hold.granted + 120  # type: ignore[operator]
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))  # 23 + 20 > 31: waits for the hold
        clock.advance(119)
        await settle()
        assert not thinker.done() and arbiter.holds
        clock.advance(2)
        lease = await thinker  # reclaimed at 120 s: the thinker loads
        assert arbiter.stats.reclaimed == 1 and arbiter.holds == {}
        lease.release()
        hold.release()  # too late: nothing to give back, nothing breaks
        assert arbiter.snapshot().held == 0

    run(test)


def test_a_memory_hold_that_can_never_fit_is_refused_with_the_numbers() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        (await arbiter.acquire("embed")).release()
        with pytest.raises(ModelWontFit, match=r"a memory hold for blender needs 40\.0 GB, the GPU has 31\.0 GB"):
            await arbiter.hold("blender", 40 * GB)
        with pytest.raises(ValueError):
            await arbiter.hold("blender", 0)

    run(test)


def test_an_engine_that_hangs_in_a_load_is_restarted_and_the_queue_goes_on() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        (await arbiter.acquire("embed")).release()
        driver.hang_next_loads = 1
        lease = await arbiter.acquire("coder")  # served after the restart, without the client seeing it
        assert driver.calls == ["load embed", "load coder", "restart", "load coder"]
        assert arbiter.stats.restarts == 1 and set(arbiter.resident) == {"coder"}  # the embed went with Ollama
        lease.release()

    run(test)


def test_an_engine_that_hangs_again_after_its_restart_fails_the_requests() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        driver.hang_next_loads = 2
        with pytest.raises(EngineDown, match="could not load coder") as failed:
            await arbiter.acquire("coder")
        assert failed.value.status == 503 and failed.value.retry_after == 30.0
        assert driver.calls == ["load coder", "restart", "load coder"]  # one restart, not a loop
        driver.hung = False
        (await arbiter.acquire("coder")).release()  # a later request may try again
        assert arbiter.stats.restarts == 1

    run(test)


def test_an_engine_that_cannot_be_restarted_is_a_clear_503() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        driver.hang_next_loads, driver.restartable = 1, False
        with pytest.raises(EngineDown, match=r"stopped answering and could not be restarted: .*no restart_command"):
            await arbiter.acquire("coder")
        assert arbiter.queue == [] and arbiter.stats.restarts == 0

    run(test)


def test_a_load_that_fails_on_an_answering_engine_restarts_nothing() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        driver.broken.add("third")
        with pytest.raises(EngineDown, match=r"could not load third: .*unable to load model"):
            await arbiter.acquire("third")
        assert driver.calls == ["load third"] and arbiter.stats.restarts == 0

    run(test)


def test_a_request_timeout_makes_the_arbiter_check_the_engine() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        (await arbiter.acquire("coder")).release()
        arbiter.suspect("coder")  # answering: nothing happens
        await settle()
        assert "restart" not in driver.calls and "coder" in arbiter.resident
        driver.hung = True
        arbiter.suspect("coder")
        await settle()
        assert driver.calls[-1] == "restart" and arbiter.resident == {}  # it comes back empty
        (await arbiter.acquire("coder")).release()
        assert driver.calls[-1] == "load coder"

    run(test)


def test_a_model_the_plan_unloads_takes_no_lease_while_the_plan_is_carried_out() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        (await arbiter.acquire("coder")).release()
        (await arbiter.acquire("third")).release()  # 15 + 13 of 31
        driver.unload_gate = asyncio.Event()
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))  # plan: unload coder, unload third, load
        await settle()
        assert driver.calls[-1] == "unload coder"  # under way
        third = asyncio.ensure_future(arbiter.acquire("third"))  # third is resident, idle... and about to go
        await settle()
        assert not third.done()  # no lease on it: it waits its turn instead of being unloaded under it
        driver.unload_gate.set()
        (await thinker).release()
        (await third).release()
        assert driver.calls[2:] == ["unload coder", "unload third", "load thinker", "unload thinker", "load third"]

    run(test)


def test_a_request_that_waited_max_wait_goes_before_fresh_higher_priority_ones() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        held = await arbiter.acquire("thinker")
        low = asyncio.ensure_future(arbiter.acquire("third"))  # 23 + 13 > 31: waits
        await settle()
        clock.advance(31)  # the low request has waited max_wait
        await settle()
        high = asyncio.ensure_future(arbiter.acquire("judge"))  # high priority, fresh; 20 + 13 > 31
        await settle()
        held.release()
        first = await low  # before the high one: ageing alone (one level per max_wait) would have let it pass
        await settle()
        assert not high.done() and driver.calls == ["load thinker", "unload thinker", "load third"]
        first.release()
        (await high).release()
        assert driver.calls[3:] == ["unload third", "load judge"]

    run(test)


def test_while_the_first_in_line_waits_for_a_memory_hold_a_model_that_fits_is_served() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        render = await arbiter.hold("blender", 10 * GB, seconds=600)
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))  # 10 + 23 > 31: waits for the render
        await settle()
        third = await arbiter.acquire("third")  # 10 + 13 fit: served now, not behind the thinker
        assert driver.calls == ["load third"] and not thinker.done()
        clock.advance(31)  # the thinker has waited max_wait, but the render holds the memory it needs:
        await settle()  # draining the third model would not let it in, so the third model keeps serving
        assert arbiter.draining == set()
        (await arbiter.acquire("third")).release()
        render.release()  # now the third model's going would let the thinker in: it drains
        await settle()
        assert arbiter.draining == {"third"}
        late = asyncio.ensure_future(arbiter.acquire("third"))
        await settle()
        assert not late.done()
        third.release()
        (await thinker).release()
        (await late).release()  # then back
        assert driver.calls == ["load third", "unload third", "load thinker", "unload thinker", "load third"]

    run(test)


@pytest.mark.parametrize("waited", [10.0, 31.0])
def test_a_model_that_would_keep_the_first_in_line_out_loads_only_before_it_waited_max_wait(waited: float) -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        coder = await arbiter.acquire("coder")
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))  # one large model at a time: coder is busy
        await settle()
        clock.advance(waited)
        third = asyncio.ensure_future(arbiter.acquire("third"))  # 15 + 13 fit, but 13 + 23 would not
        await settle()
        if waited < 30:  # served beside the coder; both drain once the thinker has waited max_wait
            (await third).release()
            assert driver.calls == ["load coder", "load third"]
            clock.advance(30 - waited)
            await settle()
            assert arbiter.draining == {"coder"}
            coder.release()
            (await thinker).release()
            assert driver.calls[2:] == ["unload coder", "unload third", "load thinker"]
        else:  # the thinker's turn: nothing new that stands in its way
            assert not third.done() and driver.calls == ["load coder"] and arbiter.draining == {"coder"}
            coder.release()
            (await thinker).release()
            (await third).release()
            assert driver.calls[1:] == ["unload coder", "load thinker", "unload thinker", "load third"]

    run(test)


def test_a_memory_hold_that_would_keep_the_first_in_line_out_waits_behind_it() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        coder = await arbiter.acquire("coder")
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))
        await settle()
        render = asyncio.ensure_future(arbiter.hold("blender", 12 * GB))  # 15 + 12 fit; 12 + 23 would not
        await settle()
        assert not render.done()  # a hold cannot drain: it could keep the thinker out for its whole time
        coder.release()
        (await thinker).release()
        (await render).release()
        assert driver.calls == ["load coder", "unload coder", "load thinker", "unload thinker"]

    run(test)


def test_a_swap_away_from_a_model_in_demand_waits_swap_delay_while_it_serves() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        for _ in range(2):  # two requests served: the coder is in demand
            (await arbiter.acquire("coder")).release()  # loads in 5 s: t = 5
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))
        await settle()
        assert not thinker.done() and driver.calls == ["load coder"]  # the coder stays for what may come
        clock.advance(10)
        (await arbiter.acquire("coder")).release()  # t = 15: it came, and is served without a swap
        await settle()
        assert not thinker.done()
        clock.advance(5)  # t = 20: the thinker request has waited swap_delay
        (await thinker).release()
        assert driver.calls == ["load coder", "unload coder", "load thinker"]
        assert list(arbiter.stats.waits) == [5.0, 0.0, 0.0, 20.0]  # 15 s held back, then its load

    run(test, swap_delay=15.0)


@pytest.mark.parametrize("requests, idle", [(1, 0.0), (2, 15.0)])
def test_a_model_not_in_demand_goes_at_once(requests: int, idle: float) -> None:
    # one request (a user who switches models after an answer), or none in swap_delay: none is likely soon
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        for _ in range(requests):
            (await arbiter.acquire("coder")).release()
        clock.advance(idle)
        (await arbiter.acquire("thinker")).release()
        assert driver.calls == ["load coder", "unload coder", "load thinker"]
        assert arbiter.stats.waits[-1] == 5.0  # its load only

    run(test, swap_delay=15.0)


def test_the_swap_delay_never_goes_past_max_wait() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        for _ in range(2):
            (await arbiter.acquire("coder")).release()
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))
        await settle()
        for _ in range(2):  # the coder keeps serving a request every 10 s
            clock.advance(10)
            (await arbiter.acquire("coder")).release()
        await settle()
        assert not thinker.done()
        clock.advance(10)  # the thinker request has waited max_wait: it goes, though the coder is in demand
        (await thinker).release()
        assert driver.calls == ["load coder", "unload coder", "load thinker"]
        assert arbiter.stats.waits[-1] == 35.0  # max_wait, then its load

    run(test, swap_delay=60.0)


def test_models_draining_for_the_first_in_line_take_no_lease_while_another_model_loads_beside_them() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        coder = await arbiter.acquire("coder")
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))
        await settle()
        clock.advance(31)  # the thinker has waited max_wait: the coder drains
        await settle()
        driver.load_gate = asyncio.Event()
        tiny = asyncio.ensure_future(arbiter.acquire("tiny"))  # fits beside the coder and beside the thinker
        await settle()
        assert driver.calls[-1] == "load tiny"  # under way
        late = asyncio.ensure_future(arbiter.acquire("coder"))
        await settle()
        assert not late.done() and "coder" in arbiter.draining  # still draining while the tiny model loads
        driver.load_gate.set()
        (await tiny).release()
        coder.release()
        (await thinker).release()
        (await late).release()
        assert driver.calls == [
            "load coder",
            "load tiny",
            "unload coder",
            "load thinker",
            "unload thinker",
            "load coder",
        ]

    run(test)


@pytest.mark.parametrize(("held", "lead"), [(4.0, 4.0), (20.0, 15.0)])
def test_the_models_in_the_way_drain_early_by_how_long_their_leases_last(held: float, lead: float) -> None:
    # the coder's leases have lasted `held` seconds: a drain for the thinker starts that long before the
    # thinker request has waited max_wait (30 s), at most half of it (15 s) early, so that the swap can
    # start by then
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        for _ in range(3):
            with await arbiter.acquire("coder"):
                clock.advance(held)
        running = await arbiter.acquire("coder")
        thinker = asyncio.ensure_future(arbiter.acquire("thinker"))
        await settle()
        clock.advance(30 - lead - 0.5)  # just before the drain
        await settle()
        (await arbiter.acquire("coder")).release()
        assert "coder" not in arbiter.draining
        clock.advance(1.0)  # just after
        await settle()
        late = asyncio.ensure_future(arbiter.acquire("coder"))
        await settle()
        assert "coder" in arbiter.draining and not late.done() and not thinker.done()
        running.release()
        (await thinker).release()
        late.cancel()

    run(test)


def test_a_model_expects_its_leases_to_last_as_long_as_nine_in_ten_of_its_latest() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        with await arbiter.acquire("coder"):
            pass
        state = arbiter.resident["coder"]
        state.lease_lengths.clear()
        assert state.expected_lease() == 0.0  # nothing seen: no lead, the drain starts at max_wait
        for seconds in range(1, 41):  # only the latest 32 count: 9 .. 40
            with await arbiter.acquire("coder"):
                clock.advance(seconds)
        assert len(state.lease_lengths) == 32 and state.expected_lease() == 37.0

    run(test)


def test_a_lease_from_before_an_engine_restart_does_not_count_against_the_model_loaded_since() -> None:
    async def test(arbiter: Arbiter, clock: FakeClock, driver: FakeDriver) -> None:
        old = await arbiter.acquire("coder")
        driver.hung = True  # the engine stops answering under that request
        arbiter.suspect("coder")
        await settle()
        assert driver.calls[-1] == "restart" and "coder" not in arbiter.resident
        new = await arbiter.acquire("coder")  # loaded again on the fresh engine
        old.release()  # the request from before the restart ends only now
        assert arbiter.resident["coder"].leases == 1  # the new request's, not 0
        new.release()
        assert arbiter.resident["coder"].leases == 0
        assert await arbiter.unload("coder")

    run(test)
