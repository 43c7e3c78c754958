"""The arbiter's rules as one pure function: ``plan(snapshot, model) -> actions``.

No I/O, no clock, no state: the scheduler builds a :class:`Snapshot` of the
device (what is resident and under how many leases, the memory holds, what
ComfyUI and other processes use) and asks what it takes to serve a request
for ``model``. The answer is

* ``[]``: the model is resident; serve it;
* ``[FreeComfy?, Unload..., Load]``: do these in order, then serve;
* ``[Wait]``: not now (a model in the way is serving requests, or memory held
  by others may come back); the scheduler asks again when something changes;
* ``[Reject]``: never (the model cannot fit beside what must stay resident).

The rules (the reference box's, docs/arbiter.md):

1. Memory: the resident models, ComfyUI, other processes and memory holds never
   add up to more than the device's capacity (its size minus a reserve).
2. One large model at a time; a large model in the way is unloaded first.
3. A model with a lease (a request in flight) is never unloaded; a pinned
   model never is.
4. To make room, ComfyUI is freed first for a large model (it reloads its own
   models on its next job), last for a small one; idle models go lowest
   priority first, then least recently used.
5. A request that could not fit even on a device holding only what must stay
   (pinned models, ComfyUI's idle footprint) is rejected at once, with the
   numbers.

Two questions the scheduler asks on top, answered with ``plan`` on a changed
snapshot: :func:`lets_in` (would the model get in once these busy models
drain?) and :func:`in_the_way` (would another model, brought in now, keep it
out once what holds memory for a while is back?).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

GB = 1024**3


class Priority(IntEnum):
    LOW = 0
    MEDIUM = 1
    HIGH = 2

    @classmethod
    def parse(cls, text: str) -> Priority:
        return cls[text.upper()]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    memory: int  # bytes when loaded
    priority: Priority = Priority.MEDIUM
    pinned: bool = False
    large: bool = False


@dataclass(frozen=True, slots=True)
class Resident:
    model: ModelInfo
    leases: int = 0  # requests in flight on it
    last_used: float = 0.0  # when its last lease ended (any monotonic clock): the LRU order


@dataclass(frozen=True, slots=True)
class Comfy:
    used: int  # what ComfyUI holds now
    idle: int  # what it still holds after /free (its CUDA context)
    busy: bool = False  # running a job: /free would give nothing back until it ends


@dataclass(frozen=True, slots=True)
class Snapshot:
    capacity: int  # bytes the arbiter may plan with: the device's size minus its reserve
    resident: tuple[Resident, ...] = ()
    comfy: Comfy | None = None
    external: int = 0  # used by processes the arbiter does not manage
    held: int = 0  # memory holds: set aside for jobs that are not models (renders, image generation)

    @property
    def used(self) -> int:
        return (
            sum(r.model.memory for r in self.resident)
            + (self.comfy.used if self.comfy else 0)
            + self.external
            + self.held
        )


@dataclass(frozen=True, slots=True)
class Load:
    model: str


@dataclass(frozen=True, slots=True)
class Unload:
    model: str
    reason: str


@dataclass(frozen=True, slots=True)
class FreeComfy:
    frees: int  # bytes it should give back


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str
    blockers: tuple[str, ...]  # resident models, "comfyui", "other processes", "memory holds"


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str


Action = Load | Unload | FreeComfy | Wait | Reject


def gb(memory: int) -> str:
    return f"{memory / GB:.1f}"


def plan(snapshot: Snapshot, model: ModelInfo) -> list[Action]:
    """What it takes to serve ``model`` now (see the module's rules)."""
    resident = {r.model.name: r for r in snapshot.resident}
    if model.name in resident:
        return []
    comfy = snapshot.comfy
    floor = comfy.idle if comfy else 0
    pinned = [r for r in snapshot.resident if r.model.pinned]
    room = snapshot.capacity - floor - sum(r.model.memory for r in pinned)
    if model.memory > room:
        kept = (
            f", {gb(snapshot.capacity - room)} GB of it held by pinned models and ComfyUI"
            if room < snapshot.capacity
            else ""
        )
        return [Reject(f"model {model.name} needs {gb(model.memory)} GB, the GPU has {gb(snapshot.capacity)} GB{kept}")]
    if model.large:
        pinned_large = [r.model.name for r in pinned if r.model.large]
        if pinned_large:
            return [
                Reject(
                    f"model {model.name} is large and so is the pinned model {pinned_large[0]}: "
                    "one large model at a time"
                )
            ]

    unload: list[Resident] = []
    if model.large:  # one large model at a time: those in the way go, or we wait for them
        for r in snapshot.resident:
            if r.model.large:
                if r.leases:
                    return [Wait(f"the large model {r.model.name} is serving {r.leases} request(s)", (r.model.name,))]
                unload.append(r)

    free = snapshot.capacity - snapshot.used + sum(r.model.memory for r in unload)
    actions: list[Action] = [Unload(r.model.name, _why_unload(r, model)) for r in unload]
    if free < model.memory:
        idle = sorted(
            (r for r in snapshot.resident if not r.model.pinned and not r.leases and r not in unload),
            key=lambda r: (r.model.priority, r.last_used),
        )
        gain = comfy.used - comfy.idle if comfy is not None and not comfy.busy else 0
        steps: list[Resident | None] = [*idle]  # None: free ComfyUI
        if gain > 0:
            steps.insert(0 if model.large else len(steps), None)
        for step in steps:
            if free >= model.memory:
                break
            if step is None:
                actions.append(FreeComfy(gain))
                free += gain
            else:
                actions.append(Unload(step.model.name, _why_unload(step, model)))
                free += step.model.memory
        if free < model.memory:
            return [Wait(_why_wait(snapshot, model, free), _blockers(snapshot))]
    actions.append(Load(model.name))
    return actions


def _why_unload(r: Resident, model: ModelInfo) -> str:
    if r.model.large and model.large:
        return f"one large model at a time: {model.name} replaces it"
    return f"idle; {model.name} needs the memory"


def _blockers(snapshot: Snapshot) -> tuple[str, ...]:
    out = [r.model.name for r in snapshot.resident if r.leases and not r.model.pinned]
    if snapshot.comfy is not None and snapshot.comfy.busy and snapshot.comfy.used > snapshot.comfy.idle:
        out.append("comfyui")
    if snapshot.held:
        out.append("memory holds")
    if snapshot.external:
        out.append("other processes")
    return tuple(out)


def _why_wait(snapshot: Snapshot, model: ModelInfo, free: int) -> str:
    return (
        f"model {model.name} needs {gb(model.memory)} GB; at most {gb(max(free, 0))} GB can be freed now "
        f"({', '.join(_blockers(snapshot)) or 'nothing else'} in the way)"
    )


def lets_in(snapshot: Snapshot, model: ModelInfo, drained: set[str]) -> bool:
    """Would ``model`` get in once the resident models ``drained`` have no request in flight?"""
    resident = tuple(replace(r, leases=0) if r.model.name in drained else r for r in snapshot.resident)
    return not any(isinstance(a, Wait) for a in plan(replace(snapshot, resident=resident), model))


def in_the_way(snapshot: Snapshot, model: ModelInfo, other: ModelInfo) -> bool:
    """Would ``other``, brought in now and busy, keep ``model`` out once the memory held for a while (requests
    in flight, memory holds, a ComfyUI job) is back? Pinned models and other processes stay."""
    resident = (*(replace(r, leases=0) for r in snapshot.resident), Resident(other, leases=1))
    comfy = replace(snapshot.comfy, busy=False) if snapshot.comfy is not None else None
    after = Snapshot(snapshot.capacity, resident, comfy, snapshot.external, 0)
    return any(isinstance(a, Wait | Reject) for a in plan(after, model))
