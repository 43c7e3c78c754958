"""The arbiter's pure policy: table tests of the reference box, then properties over random devices."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ark.arbiter.policy import (
    GB,
    Comfy,
    FreeComfy,
    Load,
    ModelInfo,
    Priority,
    Reject,
    Resident,
    Snapshot,
    Unload,
    Wait,
    in_the_way,
    lets_in,
    plan,
)

THINKER = ModelInfo("thinker", 23 * GB, Priority.HIGH, large=True)
CODER = ModelInfo("coder", 15 * GB, Priority.MEDIUM, large=True)
THIRD = ModelInfo("third", 13 * GB, Priority.LOW)
EMBED = ModelInfo("embed", GB * 3 // 10, Priority.HIGH, pinned=True)
SMALL = ModelInfo("small", 2 * GB, Priority.LOW)
CAPACITY = 31 * GB  # the 32 GB card less a 1 GB reserve
COMFY_IDLE = Comfy(used=GB * 3 // 4, idle=GB * 3 // 4)


def box(*resident: Resident, comfy: Comfy | None = COMFY_IDLE, **kwargs: int) -> Snapshot:
    return Snapshot(CAPACITY, (Resident(EMBED), *resident), comfy, **kwargs)


def test_a_resident_model_is_served_as_it_is() -> None:
    assert plan(box(Resident(THINKER, leases=3)), THINKER) == []


def test_a_model_that_fits_just_loads() -> None:
    assert plan(box(), THINKER) == [Load("thinker")]
    assert plan(box(Resident(SMALL)), THIRD) == [Load("third")]


def test_one_large_model_at_a_time() -> None:
    # 23 + 15 would not fit anyway; 15 + a 2 GB model would, but both are large: the idle one goes
    assert plan(box(Resident(CODER, last_used=5.0)), THINKER) == [
        Unload("coder", "one large model at a time: thinker replaces it"),
        Load("thinker"),
    ]
    small_large = ModelInfo("small-large", 2 * GB, large=True)
    assert plan(box(Resident(small_large)), CODER)[0] == Unload(
        "small-large", "one large model at a time: coder replaces it"
    )


def test_a_large_model_serving_requests_makes_the_other_wait() -> None:
    [wait] = plan(box(Resident(CODER, leases=2)), THINKER)
    assert isinstance(wait, Wait) and wait.blockers == ("coder",) and "serving 2 request(s)" in wait.reason


def test_comfyui_is_freed_before_a_large_load_and_last_for_a_small_one() -> None:
    comfy = Comfy(used=8 * GB, idle=GB * 3 // 4)
    assert plan(box(Resident(THIRD), comfy=comfy), THINKER) == [
        FreeComfy(8 * GB - GB * 3 // 4),
        Unload("third", "idle; thinker needs the memory"),
        Load("thinker"),
    ]
    # a small model: idle models go first (lowest priority, least recently used), ComfyUI only if still short
    assert plan(box(Resident(SMALL, last_used=1.0), comfy=comfy), THIRD) == [Load("third")]  # 0.3+2+8+13 <= 31
    big_small = ModelInfo("mid", 24 * GB)  # not large; without the small model 31 - 0.3 - 8 = 22.7 GB: short
    actions = plan(box(Resident(SMALL, last_used=1.0), comfy=comfy), big_small)
    assert actions == [Unload("small", "idle; mid needs the memory"), FreeComfy(8 * GB - GB * 3 // 4), Load("mid")]


def test_idle_models_go_lowest_priority_first_then_least_recently_used() -> None:
    a = ModelInfo("a", 10 * GB, Priority.MEDIUM)
    b = ModelInfo("b", 10 * GB, Priority.LOW)
    c = ModelInfo("c", 10 * GB, Priority.MEDIUM)
    want = ModelInfo("want", 10 * GB, Priority.MEDIUM)
    snapshot = box(Resident(a, last_used=1.0), Resident(b, last_used=9.0), Resident(c, last_used=2.0), comfy=None)
    assert [x.model for x in plan(snapshot, want) if isinstance(x, Unload)] == ["b"]
    bigger = ModelInfo("bigger", 20 * GB, Priority.MEDIUM)
    assert [x.model for x in plan(snapshot, bigger) if isinstance(x, Unload)] == ["b", "a"]


def test_busy_models_and_busy_comfyui_make_a_request_wait() -> None:
    snapshot = box(Resident(THIRD, leases=1), comfy=Comfy(used=12 * GB, idle=GB, busy=True))
    [wait] = plan(snapshot, CODER)
    assert isinstance(wait, Wait) and wait.blockers == ("third", "comfyui")
    assert "can be freed now" in wait.reason


def test_a_model_that_can_never_fit_is_rejected_with_the_numbers() -> None:
    huge = ModelInfo("huge", 40 * GB, large=True)
    [reject] = plan(box(), huge)
    assert reject == Reject(
        "model huge needs 40.0 GB, the GPU has 31.0 GB, 1.0 GB of it held by pinned models and ComfyUI"
    )
    # 30.5 GB would fit the card, not beside the pinned embedding model and ComfyUI's idle footprint
    assert isinstance(plan(box(), ModelInfo("almost", GB * 61 // 2))[0], Reject)


def test_a_pinned_large_model_rejects_other_large_models() -> None:
    pinned_large = ModelInfo("resident-large", 10 * GB, pinned=True, large=True)
    [reject] = plan(box(Resident(pinned_large)), CODER)
    assert isinstance(reject, Reject) and "one large model at a time" in reject.reason


# -- properties -----------------------------------------------------------------------------------

names = [f"m{i}" for i in range(6)]


def test_lets_in_says_whether_draining_the_busy_models_is_enough() -> None:
    busy_coder = box(Resident(CODER, leases=2))
    assert lets_in(busy_coder, THINKER, {"coder"})
    assert not lets_in(busy_coder, THINKER, set())
    # a 10 GB memory hold keeps memory no drain gives back: 0.3 + 10 + 23 > 31
    assert not lets_in(box(Resident(CODER, leases=2), held=10 * GB), THINKER, {"coder"})


def test_in_the_way_looks_past_what_holds_memory_for_a_while() -> None:
    # the third model fits beside the busy coder now, but once loaded and busy it keeps the thinker out
    assert in_the_way(box(Resident(CODER, leases=1)), THINKER, THIRD)
    # a small one does not: 0.3 + 2 + 23 <= 31, once the coder and the memory hold are gone
    assert not in_the_way(box(Resident(CODER, leases=1), held=10 * GB), THINKER, SMALL)
    # a ComfyUI job's memory comes back when the job ends (freed then): 0.3 + 0.75 + 6 + 23 fit, with 8 GB not
    working = box(comfy=Comfy(used=9 * GB, idle=GB * 3 // 4, busy=True))
    assert not in_the_way(working, THINKER, ModelInfo("six", 6 * GB))
    assert in_the_way(working, THINKER, ModelInfo("eight", 8 * GB))


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Snapshot, ModelInfo]:
    capacity = draw(st.integers(4, 80)) * GB
    models = [
        ModelInfo(
            name,
            draw(st.integers(1, 40)) * GB // 2,
            draw(st.sampled_from(list(Priority))),
            pinned=draw(st.booleans()) and draw(st.booleans()),  # a quarter of them
            large=draw(st.booleans()),
        )
        for name in names
    ]
    resident: list[Resident] = []
    used = 0
    large_seen = False
    for model in models[1:]:
        if draw(st.booleans()) and used + model.memory <= capacity and not (model.large and large_seen):
            resident.append(Resident(model, leases=draw(st.integers(0, 2)), last_used=draw(st.floats(0, 100))))
            used += model.memory
            large_seen |= model.large
    comfy = None
    if draw(st.booleans()):
        idle = draw(st.integers(0, 2)) * GB // 2
        extra = draw(st.integers(0, 8)) * GB // 2
        if used + idle + extra <= capacity:
            comfy = Comfy(idle + extra, idle, busy=draw(st.booleans()))
            used += idle + extra
    external = draw(st.integers(0, max(0, (capacity - used) // GB))) * GB
    snapshot = Snapshot(capacity, tuple(resident), comfy, external=external)
    wanted = draw(st.sampled_from(models))
    return snapshot, wanted


def apply(snapshot: Snapshot, actions: list[object]) -> Snapshot:
    resident = list(snapshot.resident)
    comfy = snapshot.comfy
    for action in actions:
        if isinstance(action, Unload):
            resident = [r for r in resident if r.model.name != action.model]
        elif isinstance(action, FreeComfy):
            assert comfy is not None and not comfy.busy
            comfy = replace(comfy, used=comfy.idle)
        elif isinstance(action, Load):
            pass
    return replace(snapshot, resident=tuple(resident), comfy=comfy)


@settings(max_examples=1000, deadline=None)
@given(scenarios())
def test_plans_keep_every_rule(scenario: tuple[Snapshot, ModelInfo]) -> None:
    snapshot, model = scenario
    actions = plan(snapshot, model)
    by_name = {r.model.name: r for r in snapshot.resident}
    if model.name in by_name:
        assert actions == []
        return
    kinds = {type(a) for a in actions}
    assert not (kinds & {Wait, Reject}) or len(actions) == 1  # a refusal comes alone
    for action in actions:
        if isinstance(action, Unload):
            victim = by_name[action.model]
            assert victim.leases == 0 and not victim.model.pinned  # never under a request; pinned stay
    pinned = sum(r.model.memory for r in snapshot.resident if r.model.pinned)
    floor = snapshot.comfy.idle if snapshot.comfy else 0
    never = model.memory > snapshot.capacity - floor - pinned or (
        model.large and any(r.model.large and r.model.pinned for r in snapshot.resident)
    )
    assert (kinds == {Reject}) == never
    if Load in kinds:
        after = apply(snapshot, actions)
        assert actions[-1] == Load(model.name)
        assert after.used + model.memory <= snapshot.capacity  # never over capacity
        assert not (model.large and any(r.model.large for r in after.resident))  # one large at a time
    if Wait in kinds:
        # nothing allowed would have made room: every idle model out and ComfyUI freed still falls short,
        # or a large model in the way is serving requests
        movable = [r for r in snapshot.resident if not r.model.pinned and not r.leases]
        comfy_gain = snapshot.comfy.used - snapshot.comfy.idle if snapshot.comfy and not snapshot.comfy.busy else 0
        best = snapshot.capacity - snapshot.used + sum(r.model.memory for r in movable) + comfy_gain
        blocked_large = model.large and any(r.model.large and r.leases for r in snapshot.resident)
        assert best < model.memory or blocked_large


@pytest.mark.parametrize("priority", list(Priority))
def test_priority_names_parse(priority: Priority) -> None:
    assert Priority.parse(priority.name.lower()) is priority
