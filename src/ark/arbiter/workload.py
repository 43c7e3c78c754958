"""The simulator's input: a workload file (JSON lines) and the machine it runs on.

One JSON object per line, in any order of ``t`` (they are replayed sorted by ``t``,
ties in file order)::

    {"t": 0.0, "model": "coder", "prompt_tokens": 800, "max_tokens": 300}
    {"t": 12.5, "kind": "hold", "holder": "comfyui", "memory_gb": 12, "seconds": 45, "priority": "medium"}

(``"kind": "lease"`` is the old name of ``"hold"`` and still read.) A first line
``{"catalog": {...}}`` describes the machine and makes the file
self-contained (it overrides the config)::

    {"catalog": {"gpu_memory_gb": 32, "reserve_gb": 1, "max_wait_s": 30,
                 "models": {"thinker": {"memory_gb": 23, "priority": "high", "load_seconds": 11.5,
                                        "tokens_per_second": 30}}}}

Without it the models come from the config's ``[models."ID"]`` tables (``memory_gb``
is then required) and the device from ``[gpu] memory_gb``. How fast the simulated
engine is is not a setting of ARK: unless the catalog line says otherwise a model
loads at :data:`LOAD_GB_PER_SECOND`, prefills :data:`PREFILL_TOKENS_PER_SECOND`,
generates :data:`TOKENS_PER_SECOND` and serves :data:`PARALLEL` requests at once;
an unload takes :data:`UNLOAD_SECONDS`.

The file is untrusted input: every line is checked (JSON, types, ranges, known
models, no unknown keys) and the first problem raises :class:`WorkloadError`
naming the line.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ark.arbiter._fields import Fields, clip, is_name, show
from ark.arbiter._fields import WorkloadError as WorkloadError  # part of this module's interface
from ark.arbiter.catalog import Entry, build
from ark.arbiter.policy import GB, Priority
from ark.config import GpuSettings, ModelSettings, Settings

LOAD_GB_PER_SECOND = 2.0  # weights from the page cache or a fast NVMe into VRAM
TOKENS_PER_SECOND = 40.0  # generation, one request
PREFILL_TOKENS_PER_SECOND = 1000.0  # prompt processing, one request
PARALLEL = 4  # requests one loaded model serves at once (Ollama's default OLLAMA_NUM_PARALLEL)
UNLOAD_SECONDS = 0.5  # the engine frees the model and the driver sees the memory come back

MAX_LINE_BYTES = 1 << 20
MAX_JOBS = 1_000_000
MAX_SECONDS = 1e7  # about 116 days: any t, hold or load time beyond is a mistake
MAX_TOKENS = 100_000_000
MAX_GB = 100_000.0
MAX_MODELS = 1000


@dataclass(frozen=True, slots=True)
class Request:
    line: int
    t: float
    model: str
    prompt_tokens: int
    max_tokens: int


@dataclass(frozen=True, slots=True)
class HoldJob:
    """A memory hold for a job that is not a model (a ComfyUI render, a Blender render)."""

    line: int
    t: float
    holder: str
    memory: int  # bytes
    seconds: float
    priority: Priority


Job = Request | HoldJob


@dataclass(frozen=True, slots=True)
class Engine:
    """How the simulated engine serves one model."""

    load_seconds: float
    tokens_per_second: float = TOKENS_PER_SECOND
    prefill_tokens_per_second: float = PREFILL_TOKENS_PER_SECOND
    parallel: int = PARALLEL

    def generation_seconds(self, request: Request) -> float:
        """Prefill then decode; every request is taken to generate all of its ``max_tokens``."""
        return request.prompt_tokens / self.prefill_tokens_per_second + request.max_tokens / self.tokens_per_second


@dataclass(frozen=True)
class Box:
    """The simulated machine: the device, the arbiter's settings, the catalog and each model's engine."""

    device_total: int  # bytes
    capacity: int  # bytes the arbiter may plan with (the device minus its reserve)
    max_wait_s: float
    queue_size: int
    catalog: Mapping[str, Entry]
    engines: Mapping[str, Engine]
    unload_seconds: float = UNLOAD_SECONDS
    unsized: frozenset[str] = field(default_factory=frozenset)  # configured models with no memory_gb
    swap_delay_s: float = 0.0


@dataclass(frozen=True)
class Workload:
    jobs: tuple[Job, ...]  # sorted by t, ties in file order
    box: Box  # the file's catalog line, or the config's machine


@dataclass(frozen=True, slots=True)
class Knobs:
    """The [gpu] settings the simulation uses: from the config, else ARK's defaults."""

    memory_gb: float
    reserve_gb: float
    max_wait_s: float
    queue_size: int
    large_fraction: float
    swap_delay_s: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings | None) -> Knobs:
        gpu = GpuSettings() if settings is None else settings.gpu  # GpuSettings(): ARK's defaults
        return cls(gpu.memory_gb, gpu.reserve_gb, gpu.max_wait_s, gpu.queue_size, gpu.large_fraction, gpu.swap_delay_s)


# -- reading ---------------------------------------------------------------------------------------


def read_workload(path: Path, knobs: Knobs, fallback: Callable[[], Box] | None = None) -> Workload:
    """Parse and check ``path``; raises :class:`WorkloadError` naming the first bad line (1-based).

    The machine is the file's catalog line, else ``fallback()`` (the config's), asked for
    only when the file has no catalog line."""
    try:
        with path.open("rb") as f:
            return parse_workload(_lines(f), knobs, fallback)
    except OSError as exc:
        raise WorkloadError(f"{path}: cannot read it ({exc.strerror})") from None


def _lines(f: BinaryIO) -> Iterator[bytes]:
    """The file's lines, refusing one longer than MAX_LINE_BYTES before reading all of it."""
    number = 0
    while line := f.readline(MAX_LINE_BYTES + 1):
        number += 1
        if len(line) > MAX_LINE_BYTES:
            raise WorkloadError(f"line {number}: longer than {MAX_LINE_BYTES} bytes")
        yield line


def parse_workload(lines: Iterable[bytes], knobs: Knobs, fallback: Callable[[], Box] | None = None) -> Workload:
    jobs: list[Job] = []
    box: Box | None = None
    for number, raw in enumerate(lines, 1):
        obj = _json(raw, number)
        if obj is None:
            continue
        if "catalog" in obj:
            if box is not None or jobs:
                raise WorkloadError(f"line {number}: a catalog line must be the first line of the file")
            outer = Fields(obj, number, "")
            catalog = outer.table("catalog")
            outer.done()
            box = _catalog(catalog, number, knobs)
            continue
        if box is None:
            if fallback is None:
                raise WorkloadError(f"line {number}: no catalog line, and no configuration to take the models from")
            try:
                box = fallback()
            except WorkloadError as exc:
                raise WorkloadError(f"line {number}: no catalog line, and {exc}") from None
        if len(jobs) >= MAX_JOBS:
            raise WorkloadError(f"line {number}: more than {MAX_JOBS} jobs")
        job = _job(obj, number)
        check_models([job], box)
        jobs.append(job)
    if box is None:
        raise WorkloadError("the file holds no jobs")
    return Workload(tuple(sorted(jobs, key=lambda j: j.t)), box)


def _json(raw: bytes, number: int) -> dict[str, Any] | None:
    try:
        text = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise WorkloadError(f"line {number}: not UTF-8 text") from None
    if not text:
        return None
    try:
        obj = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise WorkloadError(f"line {number}: not valid JSON ({_short(exc)})") from None
    if not isinstance(obj, dict):
        raise WorkloadError(f"line {number}: expected a JSON object, got {type(obj).__name__}")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


def _job(obj: dict[str, Any], number: int) -> Job:
    fields = Fields(obj, number, "")
    kind = fields.choice("kind", ("request", "hold", "lease"), "request")  # "lease": the old name of "hold"
    t = fields.number("t", lo=0.0, hi=MAX_SECONDS)
    if kind in ("hold", "lease"):
        job: Job = HoldJob(
            number,
            t,
            fields.text("holder"),
            max(1, int(fields.number("memory_gb", lo=0.0, hi=MAX_GB, open_lo=True) * GB)),
            fields.number("seconds", lo=0.0, hi=MAX_SECONDS, open_lo=True),
            Priority.parse(fields.choice("priority", ("low", "medium", "high"), "medium")),
        )
    else:
        job = Request(
            number,
            t,
            fields.text("model"),
            fields.whole("prompt_tokens", hi=MAX_TOKENS, default=0),
            fields.whole("max_tokens", hi=MAX_TOKENS, default=0),
        )
    fields.done()
    return job


def check_models(jobs: Iterable[Job], box: Box) -> None:
    """Every request names a model the box knows (and can size)."""
    for job in jobs:
        if not isinstance(job, Request) or job.model in box.catalog:
            continue
        if job.model in box.unsized:
            raise WorkloadError(
                f'line {job.line}: model "{job.model}" has no memory_gb in [models."{job.model}"]: '
                "the simulator needs its size"
            )
        known = ", ".join(sorted(box.catalog)) or "none"
        raise WorkloadError(f"line {job.line}: unknown model {show(job.model)} (known: {known})")


# -- the machine -----------------------------------------------------------------------------------


_MODEL_DEFAULTS = ModelSettings(id="")  # ARK's defaults for a model's table


def _model_settings(name: str, **values: Any) -> ModelSettings:
    """A model's settings as the config would give them: ARK's defaults, then ``values``."""
    return ModelSettings(id=name, **values)


def _box(
    knobs: Knobs,
    models: Iterable[ModelSettings],
    engines: Mapping[str, Engine],
    *,
    unload_seconds: float = UNLOAD_SECONDS,
    unsized: frozenset[str] = frozenset(),
    where: str,
) -> Box:
    total = int(knobs.memory_gb * GB)
    capacity = total - int(knobs.reserve_gb * GB)
    if total <= 0:
        raise WorkloadError(f"{where}: the GPU's size is not set (gpu_memory_gb, or [gpu] memory_gb in the config)")
    if capacity <= 0:
        raise WorkloadError(f"{where}: reserve_gb {knobs.reserve_gb} leaves nothing of a {knobs.memory_gb} GB GPU")
    catalog = build(models, {}, device_total=total, large_fraction=knobs.large_fraction)
    return Box(
        total,
        capacity,
        knobs.max_wait_s,
        knobs.queue_size,
        catalog,
        engines,
        unload_seconds,
        unsized,
        knobs.swap_delay_s,
    )


def box_from_settings(settings: Settings) -> Box:
    """The machine the config describes: models with a memory_gb, engines at the default speeds."""
    sized = [m for m in settings.models if m.memory_gb is not None]
    engines = {m.id: Engine(_default_load(m.memory_gb or 0.0)) for m in sized}
    unsized = frozenset(m.id for m in settings.models if m.memory_gb is None)
    where = str(settings.config_path) if settings.config_path else "the configuration"
    return _box(Knobs.from_settings(settings), sized, engines, unsized=unsized, where=where)


def _default_load(memory_gb: float) -> float:
    return memory_gb / LOAD_GB_PER_SECOND


def _catalog(fields: Fields, number: int, knobs: Knobs) -> Box:
    knobs = Knobs(
        fields.number("gpu_memory_gb", lo=0.0, hi=MAX_GB, open_lo=True),
        fields.number("reserve_gb", lo=0.0, hi=MAX_GB, default=knobs.reserve_gb),
        fields.number("max_wait_s", lo=0.0, hi=MAX_SECONDS, open_lo=True, default=knobs.max_wait_s),
        fields.whole("queue_size", lo=1, hi=MAX_JOBS, default=knobs.queue_size),
        fields.number("large_fraction", lo=0.0, hi=1.0, open_lo=True, default=knobs.large_fraction),
        fields.number("swap_delay_s", lo=0.0, hi=MAX_SECONDS, default=knobs.swap_delay_s),
    )
    unload = fields.number("unload_seconds", lo=0.0, hi=MAX_SECONDS, default=UNLOAD_SECONDS)
    tables = fields.mapping("models")
    fields.done()
    if not tables:
        raise WorkloadError(f"line {number}: catalog.models is empty")
    if len(tables) > MAX_MODELS:
        raise WorkloadError(f"line {number}: more than {MAX_MODELS} models")
    models, engines = [], {}
    for name, raw in tables.items():
        model, engines[name] = _catalog_model(name, Fields.nested(raw, number, f"catalog.models.{clip(name)}"))
        models.append(model)
    return _box(knobs, models, engines, unload_seconds=unload, where=f"line {number}")


def _catalog_model(name: str, fields: Fields) -> tuple[ModelSettings, Engine]:
    if not is_name(name):
        raise WorkloadError(f"line {fields.line}: a model's name must be printable text, got {show(name)}")
    memory_gb = fields.number("memory_gb", lo=0.0, hi=MAX_GB, open_lo=True)
    large = fields.value("large", "auto")
    if isinstance(large, bool):
        large = "yes" if large else "no"
    if large not in ("auto", "yes", "no"):
        raise fields.error("large", large, 'true, false, "auto", "yes" or "no"')
    model = _model_settings(
        name,
        memory_gb=memory_gb,
        priority=fields.choice("priority", ("low", "medium", "high"), "medium"),
        pinned=fields.flag("pinned", False),
        large=large,
        idle_timeout_s=fields.number("idle_timeout_s", lo=0.0, hi=MAX_SECONDS, default=_MODEL_DEFAULTS.idle_timeout_s),
    )
    engine = Engine(
        fields.number("load_seconds", lo=0.0, hi=MAX_SECONDS, default=_default_load(memory_gb)),
        fields.number("tokens_per_second", lo=0.0, hi=1e9, open_lo=True, default=TOKENS_PER_SECOND),
        fields.number("prefill_tokens_per_second", lo=0.0, hi=1e9, open_lo=True, default=PREFILL_TOKENS_PER_SECOND),
        fields.whole("parallel", lo=1, hi=100_000, default=PARALLEL),
    )
    fields.done()
    return model, engine
