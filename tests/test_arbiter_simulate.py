"""`ark gpu simulate`: the virtual loop, both policies on hand-computed workloads, the fifo model of
Ollama's sched.go, and the workload file as hostile input. All times are virtual: no test waits."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from click.testing import CliRunner

from ark.arbiter.catalog import Entry
from ark.arbiter.fifo import FifoLease, FifoScheduler
from ark.arbiter.policy import GB, ModelInfo, Priority
from ark.arbiter.simulate import Result, percentile, simulate
from ark.arbiter.virtual_loop import LoopClock, SimulationStuck, VirtualEventLoop
from ark.arbiter.workload import Knobs, Workload, parse_workload
from ark.cli.main import main
from ark.errors import ModelWontFit, QueueFull

T = TypeVar("T")


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    return VirtualEventLoop().run(coro)  # type: ignore[no-any-return]


# -- the virtual loop ---------------------------------------------------------------------------------


def test_sleeps_add_up_exactly_on_virtual_time() -> None:
    # An hour-long sleep would trip pytest's timeout if it slept for real; the clock must read the exact sum.
    async def sleeper() -> list[float]:
        loop = asyncio.get_running_loop()
        seen = []
        for delay in (0.5, 0.25, 3600.0, 0.125):
            await asyncio.sleep(delay)
            seen.append(loop.time())
        return seen

    assert run_virtual(sleeper()) == [0.5, 0.75, 3600.75, 3600.875]


def test_timers_fire_in_order_and_timeouts_at_their_deadline() -> None:
    async def scenario() -> tuple[list[tuple[str, float]], float]:
        loop = asyncio.get_running_loop()
        fired: list[tuple[str, float]] = []
        loop.call_later(7.0, lambda: fired.append(("late", loop.time())))
        loop.call_later(2.0, lambda: fired.append(("early", loop.time())))
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 10.0)
        return fired, loop.time()

    assert run_virtual(scenario()) == ([("early", 2.0), ("late", 7.0)], 10.0)


def test_a_simulation_where_everyone_waits_forever_raises_instead_of_hanging() -> None:
    with pytest.raises(SimulationStuck):
        run_virtual(asyncio.Event().wait())


def test_loop_clock_waits_until_the_event_or_the_deadline_and_can_be_cancelled() -> None:
    async def scenario() -> tuple[float, float, bool]:
        clock, event = LoopClock(), asyncio.Event()
        await clock.wait(event, 4.0)  # nothing happens: returns at the deadline
        at_deadline = clock.now()
        asyncio.get_running_loop().call_later(1.5, event.set)
        await clock.wait(event, None)
        at_event = clock.now()
        # The event and a cancel in the same loop iteration: the cancel must not be swallowed
        # (asyncio.wait_for on Python 3.11 swallows it, and an owner task would never stop).
        event.clear()
        task = asyncio.create_task(clock.wait(event, None))
        await asyncio.sleep(0)
        event.set()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return at_deadline, at_event, task.cancelled()

    assert run_virtual(scenario()) == (4.0, 5.5, True)


# -- both policies on hand-computed workloads ----------------------------------------------------------

# A 20 GB GPU (no reserve) that holds one of two 12 GB models. Loads take 10 s, unloads 1 s, a request
# of 100 tokens takes 10 s (prefill is made instant), max_wait is 30 s.
BOX: dict[str, Any] = {
    "gpu_memory_gb": 20,
    "reserve_gb": 0,
    "max_wait_s": 30,
    "unload_seconds": 1,
    "models": {
        name: {"memory_gb": 12, "load_seconds": 10, "tokens_per_second": 10, "prefill_tokens_per_second": 1e9}
        for name in ("a", "b")
    },
}


def workload(*jobs: dict[str, Any], box: dict[str, Any] | None = None) -> Workload:
    lines = [json.dumps({"catalog": box or BOX}), *(json.dumps(j) for j in jobs)]
    return parse_workload([line.encode() for line in lines], Knobs.from_settings(None))


def req(t: float, model: str, tokens: int = 100) -> dict[str, Any]:
    return {"t": t, "model": model, "prompt_tokens": 0, "max_tokens": tokens}


def run_both(w: Workload) -> dict[str, Result]:
    return {policy: simulate(w, w.box, policy) for policy in ("ark", "fifo")}


def test_two_models_alternating_on_a_gpu_that_fits_one() -> None:
    # a@0, b@1, a@2, b@3, each 10 s of generation. Both policies:
    #   a loads 0-10; a@0 and a@2 run 10-20 (waits 10 and 8); b must wait for a's requests (busy).
    #   20: a idle -> unload 20-21, b loads 21-31 (one swap); b@1 and b@3 run 31-41 (waits 30 and 28).
    # fifo gets there differently: b@1 arrives while a loads and goes to the back of the queue
    # (sched.go's reschedDelay); b@3 makes room; b@1 finds b loading and joins it.
    w = workload(req(0, "a"), req(1, "b"), req(2, "a"), req(3, "b"))
    for policy, r in run_both(w).items():
        assert (r.completed, r.swaps, r.loads, r.unloads) == (4, 1, 2, 1), policy
        assert (r.wait_p50_s, r.wait_p95_s, r.wait_max_s, r.wait_mean_s) == (10.0, 30.0, 30.0, 19.0), policy
        assert r.makespan_s == 41.0 and r.load_seconds_total == 20.0, policy


def test_ark_keeps_a_busy_model_batching_where_fifo_swaps_back_and_forth() -> None:
    # a@0 (a loads 0-10, runs 10-20), b@11, a@12.
    # ark: b waits (a is busy, < max_wait); a@12 is served at once by the resident a (runs 12-22);
    #      22: a idle, but in demand (two requests served, the latest just now): the swap waits until b has
    #      waited swap_delay (15 s), in case more come for a; 26: unload 26-27, b loads 27-37: waits 10, 0,
    #      26; one swap; ends at 47.
    # fifo: b@11 is at the head: a is set to expire; a@12 queues behind b though a is loaded.
    #      20: a idle -> unload 20-21, b loads 21-31 (b waits 20), runs 31-41; then a@12 needs a back:
    #      b expires, 41-42 unload, a loads 42-52 (a@12 waits 40): two swaps; ends at 62.
    r = run_both(workload(req(0, "a"), req(11, "b"), req(12, "a"), box={**BOX, "swap_delay_s": 15}))
    assert (r["ark"].swaps, r["ark"].wait_max_s, r["ark"].wait_p50_s, r["ark"].makespan_s) == (1, 26.0, 10.0, 47.0)
    # with the default (no swap delay) b goes as soon as a is idle: 22 unload, b loads 23-33, waits 22
    w = workload(req(0, "a"), req(11, "b"), req(12, "a"))
    plain = simulate(w, w.box, "ark")
    assert (plain.swaps, plain.wait_max_s, plain.makespan_s) == (1, 22.0, 43.0)
    assert (r["fifo"].swaps, r["fifo"].wait_max_s, r["fifo"].wait_p50_s, r["fifo"].makespan_s) == (2, 40.0, 20.0, 62.0)


def test_ark_drains_early_by_the_expected_lease_so_every_wait_stays_within_max_wait_plus_one_swap() -> None:
    # a@0 (load 0-10, runs 10-20), b@5, then a@12 and a@21 are served by the resident a while b waits.
    # a's leases last 10 s (seen from a@0 on), so the drain lead is min(10, 30 / 2) = 10 s: from 25 s
    # (b's 30 s less 10) a takes no new lease, so a@30 queues; a@21 ends at 31; unload 31-32, b loads
    # 32-42: b waits 37, within max_wait plus one swap (41 s) where a drain begun at 35 would have
    # made it 46. a@30 then waits for b's request (42-52), unload 52-53, a loads 53-63: 33 s; a@36: 27 s.
    w = workload(req(0, "a"), req(5, "b"), req(12, "a"), req(21, "a"), req(30, "a"), req(36, "a"))
    r = simulate(w, w.box, "ark")
    assert r.swaps == 2
    assert (r.models["a"].wait_max_s, r.models["b"].wait_max_s) == (33.0, 37.0)
    assert r.wait_bound_s == 30 + 1 + 10  # what the docs call "max_wait plus one swap"
    assert r.wait_max_s <= r.wait_bound_s
    # fifo, same workload: b@5 (arrived while a loaded) is requeued at 10.25 behind nothing, makes room
    # at once (a expires); every later request for a waits behind it: a@12 40 s, a@21 31, a@30 22, a@36 16.
    f = simulate(w, w.box, "fifo")
    assert (f.swaps, f.models["b"].wait_max_s, f.models["a"].wait_max_s, f.wait_p50_s) == (2, 26.0, 40.0, 22.0)


@pytest.mark.parametrize("kind", ["hold", "lease"])  # "lease": the old name, still read
def test_a_memory_hold_waits_for_the_busy_model_then_takes_its_memory(kind: str) -> None:
    # a@0 loads 0-10 and runs 10-20; a 10 GB hold at 1 s does not fit beside a (12 + 10 > 20).
    # Both: 20 a idle -> unload 20-21 -> hold granted at 21 (waited 20 s), a swap, held 5 s.
    hold = {"t": 1, "kind": kind, "holder": "comfyui", "memory_gb": 10, "seconds": 5}
    for policy, r in run_both(workload(req(0, "a"), hold)).items():
        assert (r.holds, r.holds_rejected, r.hold_wait_max_s, r.swaps) == (1, 0, 20.0, 1), policy
        assert r.makespan_s == 26.0, policy
        assert [(s.name, s.kind, s.start, s.end) for s in r.spans] == [
            ("a", "model", 0.0, 21.0),
            ("comfyui", "hold", 21.0, 26.0),
        ], policy
        out = r.to_json()
        assert (out["holds"], out["hold_wait_max_s"]) == (out["leases"], out["lease_wait_max_s"]) == (1, 20.0)


def test_a_model_bigger_than_the_gpu_is_rejected_by_both() -> None:
    box = {**BOX, "models": {**BOX["models"], "huge": {"memory_gb": 30}}}
    for policy, r in run_both(workload(req(0, "huge"), req(1, "a"), box=box)).items():
        assert (r.requests, r.completed, r.rejected) == (2, 1, 1), policy


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 95) == 0.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([float(i) for i in range(1, 21)], 95) == 19.0
    assert percentile([float(i) for i in range(1, 101)], 95) == 95.0


# -- the fifo policy behaves as sched.go does ----------------------------------------------------------


class Recorder:
    """A driver that logs what it is asked, when (virtual seconds); loads take 10 s, unloads 1 s."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []

    def _log(self, what: str) -> None:
        self.calls.append((asyncio.get_running_loop().time(), what))

    async def load(self, model: str) -> int | None:
        self._log(f"load {model}")
        await asyncio.sleep(10)
        return None

    async def unload(self, model: str) -> None:
        self._log(f"unload {model}")
        await asyncio.sleep(1)

    async def free_comfy(self) -> None:
        return None

    def offloaded(self, model: str) -> tuple[int, int] | None:
        return None

    async def heal(self, model: str) -> set[str] | None:
        return None


def entry(name: str, gb: float, idle: float = 300.0, *, pinned: bool = False) -> Entry:
    return Entry(ModelInfo(name, int(gb * GB), Priority.MEDIUM, pinned), None, idle, "config")


def fifo_run(
    catalog: list[Entry], scenario: Callable[[FifoScheduler], Coroutine[Any, Any, T]], capacity_gb: float = 20
) -> tuple[T, Recorder]:
    recorder = Recorder()

    async def main() -> T:
        sched = FifoScheduler(
            {e.info.name: e for e in catalog}, recorder, capacity=int(capacity_gb * GB), queue_size=4, clock=LoopClock()
        )
        sched.start()
        try:
            return await scenario(sched)
        finally:
            await sched.close()

    return run_virtual(main()), recorder


async def at(t: float, coro: Coroutine[Any, Any, T]) -> T:
    await asyncio.sleep(t - asyncio.get_running_loop().time())
    return await coro


async def lease_for(sched: FifoScheduler, model: str, seconds: float) -> float:
    """A request: wait for the lease, keep it ``seconds``; returns when it was granted."""
    lease = await sched.acquire(model)
    granted = asyncio.get_running_loop().time()
    await asyncio.sleep(seconds)
    lease.release()
    return granted


def test_fifo_one_pending_request_at_a_time_blocks_even_a_loaded_model() -> None:
    # sched.go: "we're queueing up all incoming requests, even if they were for a different model that's
    # loaded". a loads 0-10 and serves a 30 s request; b@12 must wait for it; a@13 waits behind b.
    async def scenario(sched: FifoScheduler) -> list[float]:
        return list(
            await asyncio.gather(
                lease_for(sched, "a", 30), at(12, lease_for(sched, "b", 5)), at(13, lease_for(sched, "a", 1))
            )
        )

    granted, rec = fifo_run([entry("a", 12), entry("b", 12)], scenario)
    # a@0 at 10; a ends 40, unload 40-41, b loads 41-51 (granted 51), ends 56, unload 56-57, a 57-67.
    assert granted == [10.0, 51.0, 67.0]
    assert rec.calls == [(0, "load a"), (40, "unload a"), (41, "load b"), (56, "unload b"), (57, "load a")]


def test_fifo_evicts_the_idle_runner_with_the_shortest_keep_alive_first() -> None:
    # a (keep-alive 100 s) and b (300 s) are loaded and idle, pinned p never expires; c needs one's room.
    async def scenario(sched: FifoScheduler) -> float:
        for model in ("p", "b", "a"):
            (await sched.acquire(model)).release()
        return await lease_for(sched, "c", 1)

    catalog = [entry("a", 8, idle=100), entry("b", 8, idle=300), entry("c", 8), entry("p", 1, pinned=True)]
    granted, rec = fifo_run(catalog, scenario, capacity_gb=40)
    # p, b, a load 0-10, 10-20, 20-30; at 30 three runners are loaded, OLLAMA_MAX_LOADED_MODELS' default:
    # one goes although c would fit beside them (25 of 40 GB): the idle one with the shortest keep-alive, a.
    assert rec.calls[3:] == [(30, "unload a"), (31, "load c")]
    assert granted == 41.0


def test_fifo_evicts_even_a_pinned_model_when_it_is_the_only_idle_one() -> None:
    # Ollama reads keep_alive < 0 as "forever" but findRunnerToUnload still takes the first idle runner.
    async def scenario(sched: FifoScheduler) -> float:
        (await sched.acquire("p")).release()
        busy = asyncio.create_task(lease_for(sched, "a", 50))
        await asyncio.sleep(15)
        granted = await lease_for(sched, "c", 1)
        await busy
        return granted

    granted, rec = fifo_run([entry("p", 4, pinned=True), entry("a", 8), entry("c", 8)], scenario, capacity_gb=16)
    # p loads 0-10; a 10-20 and serves to 70; at 25 c needs 8 GB and 4 are free: the busy a sorts first
    # (300 s keep-alive against p's forever) but the idle pinned p is taken (25-26); c loads 26-36.
    assert rec.calls[2:] == [(25, "unload p"), (26, "load c")] and granted == 36.0


def test_fifo_waits_for_a_busy_runner_and_it_unloads_when_its_last_request_ends() -> None:
    async def scenario(sched: FifoScheduler) -> list[float]:
        return list(await asyncio.gather(lease_for(sched, "a", 25), at(11, lease_for(sched, "b", 1))))

    granted, rec = fifo_run([entry("a", 12), entry("b", 12)], scenario)
    # a 0-10, serves to 35 (keep-alive 300 s, but set to expire for b): unload 35-36, b loads 36-46.
    assert granted == [10.0, 46.0]
    assert rec.calls == [(0, "load a"), (35, "unload a"), (36, "load b")]


def test_fifo_idle_runner_expires_after_its_keep_alive() -> None:
    async def scenario(sched: FifoScheduler) -> None:
        await lease_for(sched, "a", 5)  # 10-15
        await asyncio.sleep(100)

    _, rec = fifo_run([entry("a", 12, idle=60)], scenario)
    assert rec.calls == [(0, "load a"), (75, "unload a")]


def test_fifo_full_queue_fails_at_once_and_a_model_that_never_fits_is_refused() -> None:
    async def scenario(sched: FifoScheduler) -> list[str]:
        # queue_size 4: four requests are pending before the owner task takes the first, two more are refused
        results = await asyncio.gather(*(sched.acquire("a") for _ in range(6)), return_exceptions=True)
        for result in results:
            if isinstance(result, FifoLease):
                result.release()
        with pytest.raises(ModelWontFit):
            await sched.acquire("huge")
        return [type(r).__name__ for r in results]

    names, _ = fifo_run([entry("a", 12), entry("huge", 30)], scenario)
    assert names == ["FifoLease"] * 4 + [QueueFull.__name__] * 2


# -- the CLI and the workload file as hostile input ----------------------------------------------------


def write(tmp_path: Path, *lines: str) -> Path:
    path = tmp_path / "w.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


CATALOG_LINE = json.dumps({"catalog": BOX})
REQUIRED = {"completed", "rejected", "swaps", "load_seconds_total", "wait_p50_s", "wait_p95_s", "wait_max_s"}


@pytest.mark.parametrize("policy", ["ark", "fifo"])
def test_cli_json_prints_the_required_keys(tmp_path: Path, policy: str) -> None:
    path = write(tmp_path, CATALOG_LINE, json.dumps(req(0, "a")), json.dumps(req(1, "b")))
    result = CliRunner().invoke(main, ["gpu", "simulate", str(path), "--policy", policy, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert REQUIRED | {"makespan_s"} <= set(out)
    assert (out["policy"], out["completed"], out["swaps"]) == (policy, 2, 1)


def test_cli_summary_and_a_config_instead_of_a_catalog_line(tmp_path: Path) -> None:
    config = tmp_path / "ark.toml"
    config.write_text('[gpu]\nmemory_gb = 32\n\n[models."coder"]\nmemory_gb = 15\n\n[models."unsized"]\n')
    path = write(tmp_path, json.dumps(req(0, "coder")))
    result = CliRunner().invoke(main, ["gpu", "simulate", str(path), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "completed / rejected" in result.output and "who held the GPU" in result.output
    path = write(tmp_path, json.dumps(req(0, "coder")), json.dumps(req(1, "unsized")))
    result = CliRunner().invoke(main, ["gpu", "simulate", str(path), "--config", str(config)])
    assert result.exit_code == 2 and "line 2" in result.output and "memory_gb" in result.output


@pytest.mark.parametrize(
    ("lines", "line", "words"),
    [
        ([CATALOG_LINE, '{"t": 0, "model": "a"'], 2, "not valid JSON"),
        ([CATALOG_LINE, "[1, 2]"], 2, "expected a JSON object"),
        ([CATALOG_LINE, '{"t": "soon", "model": "a"}'], 2, '"t" must be a number'),
        ([CATALOG_LINE, '{"t": -1, "model": "a"}'], 2, '"t" must be a number'),
        ([CATALOG_LINE, '{"t": NaN, "model": "a"}'], 2, "not valid JSON"),
        ([CATALOG_LINE, '{"t": 1e999, "model": "a"}'], 2, '"t" must be a number'),
        ([CATALOG_LINE, '{"t": true, "model": "a"}'], 2, '"t" must be a number'),
        ([CATALOG_LINE, "", '{"t": 0, "model": "a", "max_tokens": 1.5}'], 3, '"max_tokens" must be a whole'),
        ([CATALOG_LINE, '{"t": 0, "model": "nope"}'], 2, 'unknown model "nope"'),
        ([CATALOG_LINE, '{"t": 0, "model": "a", "tokens": 5}'], 2, 'unknown key "tokens"'),
        ([CATALOG_LINE, '{"t": 0, "model": 7}'], 2, '"model" must be a non-empty string'),
        ([CATALOG_LINE, '{"t": 0, "kind": "hold", "holder": "x", "memory_gb": 0, "seconds": 1}'], 2, "memory_gb"),
        ([CATALOG_LINE, '{"t": 0, "kind": "job"}'], 2, '"kind" must be'),
        ([json.dumps(req(0, "a")), CATALOG_LINE], 1, "no catalog line"),
        ([CATALOG_LINE, CATALOG_LINE], 2, "must be the first line"),
        (
            ['{"catalog": {"gpu_memory_gb": 32, "models": {"a": {"memory_gb": "big"}}}}'],
            1,
            "catalog.models.a.memory_gb",
        ),
        (['{"catalog": {"gpu_memory_gb": 32, "models": {}}}'], 1, "catalog.models is empty"),
        (['{"catalog": {"gpu_memory_gb": 32, "models": []}}'], 1, '"catalog.models" must be a JSON object'),
        ([CATALOG_LINE, '{"t": 0, "model": "\\u00e9\\ud800"}'], 2, '"model" must be a non-empty string'),
        ([CATALOG_LINE, '{"t": 0, "model": "\\u00e9"}'], 2, 'unknown model "\\u00e9"'),
    ],
)
def test_cli_bad_workload_lines_exit_2_naming_the_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lines: list[str], line: int, words: str
) -> None:
    monkeypatch.setenv("ARK_CONFIG", str(tmp_path / "none.toml"))  # no config: the file must be self-contained
    monkeypatch.setenv("ARK_DATA_DIR", str(tmp_path))
    (tmp_path / "none.toml").write_text("")
    path = write(tmp_path, *lines)
    result = CliRunner().invoke(main, ["gpu", "simulate", str(path), "--json"])
    assert result.exit_code == 2, result.output
    assert f"line {line}:" in result.output and words in result.output, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output


def test_cli_binary_and_oversized_lines_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "w.jsonl"
    path.write_bytes(CATALOG_LINE.encode() + b"\n\xff\xfe\n")
    result = CliRunner().invoke(main, ["gpu", "simulate", str(path)])
    assert result.exit_code == 2 and "line 2: not UTF-8" in result.output
    path.write_bytes(CATALOG_LINE.encode() + b"\n" + b" " * (1 << 20) + b"{}\n")
    result = CliRunner().invoke(main, ["gpu", "simulate", str(path)])
    assert result.exit_code == 2 and "line 2: longer than" in result.output
