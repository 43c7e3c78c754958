"""The model catalog: what each model needs on the device, and the policy it gets.

A model's memory comes from ``[models."ID"] memory_gb`` when the operator set
it, else from an estimate: the weights (the GGUF file, or the size Ollama
reports) plus the KV cache llama.cpp allocates for the context window
(keys and values, for every layer: ``2 * layers * n_ctx * kv_heads * head_dim``
elements at 2 bytes each) plus a compute buffer. The architecture numbers come
from the GGUF header (read here, without the weights) or from Ollama's
``/api/show`` ``model_info``, which carries the same keys. The estimate is
refined by what the engine reports once the model is loaded (Ollama's
``/api/ps`` size), which the scheduler records.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ark.arbiter.policy import GB, ModelInfo, Priority
from ark.config import ModelSettings

MIB = 1024**2
_COMPUTE_FRACTION = 0.05  # llama.cpp's compute buffers: a few percent of the weights
_COMPUTE_FLOOR = 64 * MIB


@dataclass(frozen=True, slots=True)
class Architecture:
    """What sizes the KV cache, as GGUF metadata (and Ollama's model_info) name it."""

    layers: int  # {arch}.block_count
    context_length: int  # {arch}.context_length: the most the model was trained for
    kv_heads: int  # {arch}.attention.head_count_kv (head_count when absent: no grouped-query attention)
    head_dim: int  # {arch}.attention.key_length, else embedding_length / head_count

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any]) -> Architecture | None:
        arch = meta.get("general.architecture")
        if not isinstance(arch, str):
            return None

        def number(key: str) -> int | None:
            value = meta.get(f"{arch}.{key}")
            if isinstance(value, list | tuple):  # per-layer values (some architectures): the largest
                value = max(value) if value else None
            return int(value) if isinstance(value, int | float) and value > 0 else None

        layers, heads = number("block_count"), number("attention.head_count")
        width, context = number("embedding_length"), number("context_length")
        if layers is None or heads is None or width is None:
            return None
        head_dim = number("attention.key_length") or width // heads
        return cls(layers, context or 2048, number("attention.head_count_kv") or heads, head_dim)


def estimate_memory(weights: int, arch: Architecture | None, n_ctx: int) -> int:
    """Bytes llama.cpp needs for a model: weights, the f16 KV cache for ``n_ctx`` (0: the model's own), buffers."""
    kv = 0
    if arch is not None:
        context = n_ctx or arch.context_length
        kv = 2 * arch.layers * context * arch.kv_heads * arch.head_dim * 2
    return weights + kv + max(_COMPUTE_FLOOR, int(weights * _COMPUTE_FRACTION))


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_SMALL_ARRAY = 4096  # arrays longer than this (vocabularies) are skipped, not read
_LONGEST_STRING = 16 * 1024 * 1024


def gguf_metadata(path: Path) -> dict[str, Any]:
    """The metadata of a GGUF file (v2/v3), from its header only: the weights are never read.

    The format: "GGUF", version (u32), tensor count (u64), key/value count (u64), then per pair a key
    (u64 length + UTF-8) and a typed value (u32 type; strings as u64 length + bytes; arrays as u32 element
    type + u64 count + elements). Large arrays (the tokenizer's vocabulary) are skipped.
    """
    with path.open("rb") as f:

        def unpack(fmt: str) -> Any:
            size = struct.calcsize(fmt)
            data = f.read(size)
            if len(data) != size:
                raise ValueError(f"{path}: the GGUF header ends early")
            return struct.unpack(fmt, data)[0]

        def string() -> str:
            length = unpack("<Q")
            if length > _LONGEST_STRING:  # a header string this long is a corrupt (or hostile) file
                raise ValueError(f"{path}: a GGUF string of {length} bytes")
            data = f.read(length)
            if len(data) != length:
                raise ValueError(f"{path}: the GGUF header ends early")
            return data.decode("utf-8", "replace")

        def value(kind: int) -> Any:
            if kind in _SCALARS:
                return unpack(_SCALARS[kind])
            if kind == _STRING:
                return string()
            if kind == _ARRAY:
                element, count = unpack("<I"), unpack("<Q")
                if count > _SMALL_ARRAY:
                    if element in _SCALARS:
                        f.seek(count * struct.calcsize(_SCALARS[element]), 1)
                    elif element == _STRING:
                        for _ in range(count):
                            f.seek(unpack("<Q"), 1)
                    else:
                        raise ValueError(f"{path}: cannot skip an array of type {element}")
                    return None
                return [value(element) for _ in range(count)]
            raise ValueError(f"{path}: unknown GGUF value type {kind}")

        if f.read(4) != b"GGUF":
            raise ValueError(f"{path} is not a GGUF file")
        version = unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported")
        unpack("<Q")  # tensors
        out: dict[str, Any] = {}
        for _ in range(unpack("<Q")):
            key = string()
            out[key] = value(unpack("<I"))
        return out


@dataclass(frozen=True, slots=True)
class Entry:
    info: ModelInfo
    engine: str | None
    idle_timeout: float  # seconds; 0: never unloaded for idleness
    source: str  # where the memory figure came from: "config", "estimate", "reported", "unknown"


@dataclass(frozen=True, slots=True)
class Facts:
    """What an engine tells of a model it serves: the weights' size and, when known, the architecture."""

    weights: int
    arch: Architecture | None = None
    n_ctx: int = 0
    reported: int | None = None  # what the engine said the loaded model takes (Ollama's /api/ps size)


def build(
    configured: Iterable[ModelSettings],
    facts: Mapping[str, Facts],
    *,
    device_total: int,
    large_fraction: float,
) -> dict[str, Entry]:
    """One entry per model known from the config or from an engine."""
    settings = {m.id: m for m in configured}
    out: dict[str, Entry] = {}
    for name in sorted({*settings, *facts}):
        model = settings.get(name)
        fact = facts.get(name)
        if model is not None and model.memory_gb is not None:
            memory, source = int(model.memory_gb * GB), "config"
        elif fact is not None and fact.reported is not None:
            memory, source = fact.reported, "reported"
        elif fact is not None:
            memory, source = estimate_memory(fact.weights, fact.arch, fact.n_ctx), "estimate"
        else:
            memory, source = 0, "unknown"
        large_setting = model.large if model is not None else "auto"
        large = large_setting == "yes" or (large_setting == "auto" and memory > large_fraction * device_total)
        info = ModelInfo(
            name,
            memory,
            Priority.parse(model.priority) if model is not None else Priority.MEDIUM,
            pinned=model.pinned if model is not None else False,
            large=large,
        )
        out[name] = Entry(
            info, model.engine if model is not None else None, model.idle_timeout_s if model else 300.0, source
        )
    return out


def describe(entry: Entry) -> str:
    """One line for `ark gpu status` and logs."""
    flags = [entry.info.priority.name.lower()]
    if entry.info.pinned:
        flags.append("pinned")
    if entry.info.large:
        flags.append("large")
    return f"{entry.info.name}: {entry.info.memory / GB:.2f} GB ({entry.source}), {', '.join(flags)}"
