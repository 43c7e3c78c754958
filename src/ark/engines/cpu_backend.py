"""Choose and register llama.cpp's CPU backend: the best variant the kernel says this CPU can run.

``scripts/install`` builds llama.cpp with ``GGML_BACKEND_DL`` and ``GGML_CPU_ALL_VARIANTS``: nothing compiled
for the build machine, one ``libggml-cpu-<variant>.so`` per x86 instruction-set level beside ``libggml.so``,
so the same build runs on any x86-64 machine. Two things are left to ARK:

* nothing registers a CPU backend by itself (llama.cpp's fallback searches only the executable's directory
  and the working directory), so one must be loaded before the first ``Llama``;
* ggml's own pick reads CPUID only, which advertises instructions a hypervisor or kernel may not have
  enabled (AVX-512 or AMX state): its choice can fault. The kernel clears a flag in /proc/cpuinfo when
  it does not enable the state behind it, so ARK chooses from those flags.

Call :func:`load_cpu_backend` once in the process that runs llama.cpp, before the first model loads.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import platform
import re
from collections.abc import Collection, Iterator
from pathlib import Path

from ark.errors import ArkError

# ggml's x86 features (its GGML_<name> CMake options) -> (the weight ggml_backend_cpu_x86_score adds for the
# feature, the /proc/cpuinfo flags of the instructions the compiler may then emit). The flags follow the -m
# options each GGML_<name> adds in ggml/src/ggml-cpu/CMakeLists.txt (-msse4.2 also allows SSSE3 and
# SSE4.1; AVX512 is -mavx512f -mavx512cd -mavx512vl -mavx512dq -mavx512bw); the weights come from
# ggml/src/ggml-cpu/arch/x86/cpu-feats.cpp, so ARK ranks variants the way ggml does (it does not count
# AMX_TILE). Both from the llama.cpp vendored in llama-cpp-python 0.3.36: recheck when the pin moves.
_FEATURES: dict[str, tuple[int, tuple[str, ...]]] = {
    "FMA": (1, ("fma",)),
    "F16C": (1 << 1, ("f16c",)),
    "SSE42": (1 << 2, ("ssse3", "sse4_1", "sse4_2")),
    "BMI2": (1 << 3, ("bmi2",)),
    "AVX": (1 << 4, ("avx",)),
    "AVX2": (1 << 5, ("avx2",)),
    "AVX_VNNI": (1 << 6, ("avx_vnni",)),
    "AVX512": (1 << 7, ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")),
    "AVX512_VBMI": (1 << 8, ("avx512vbmi",)),
    "AVX512_BF16": (1 << 9, ("avx512_bf16",)),
    "AVX512_VNNI": (1 << 10, ("avx512_vnni",)),
    "AMX_TILE": (0, ("amx_tile",)),
    "AMX_INT8": (1 << 11, ("amx_int8",)),
}

_BASE = ("SSE42", "AVX", "F16C", "FMA", "AVX2", "BMI2")  # haswell: what every newer variant starts from
# The x86 variants GGML_CPU_ALL_VARIANTS builds and the features each is compiled with: the
# ggml_add_cpu_backend_variant(...) calls in ggml/src/CMakeLists.txt.
VARIANTS: dict[str, tuple[str, ...]] = {
    "x64": (),
    "sse42": ("SSE42",),
    "sandybridge": ("SSE42", "AVX"),
    "ivybridge": ("SSE42", "AVX", "F16C"),
    "piledriver": ("SSE42", "AVX", "F16C", "FMA"),
    "haswell": _BASE,
    "skylakex": (*_BASE, "AVX512"),
    "cannonlake": (*_BASE, "AVX512", "AVX512_VBMI"),
    "cascadelake": (*_BASE, "AVX512", "AVX512_VNNI"),
    "icelake": (*_BASE, "AVX512", "AVX512_VBMI", "AVX512_VNNI"),
    "cooperlake": (*_BASE, "AVX512", "AVX512_VNNI", "AVX512_BF16"),
    "zen4": (*_BASE, "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16"),
    "alderlake": (*_BASE, "AVX_VNNI"),
    "sapphirerapids": (*_BASE, "AVX512", "AVX512_VBMI", "AVX512_VNNI", "AVX512_BF16", "AMX_TILE", "AMX_INT8"),
}

_VARIANT_FILE = re.compile(r"libggml-cpu-(.+)\.so$")


class CpuBackendError(ArkError):
    """No llama.cpp CPU variant could be registered: the message says what is on disk and what is missing."""


def required_flags(variant: str) -> frozenset[str]:
    """The /proc/cpuinfo flags an x86 variant's code may use."""
    return frozenset(flag for feature in VARIANTS[variant] for flag in _FEATURES[feature][1])


def _score(variant: str) -> int:
    return 1 + sum(_FEATURES[feature][0] for feature in VARIANTS[variant])


def choose_variant(available: Collection[str], cpu_flags: Collection[str], exclude: Collection[str] = ()) -> str | None:
    """The most capable of ``available`` that the CPU runs by its kernel's flags, ``exclude`` left out."""
    flags = frozenset(cpu_flags)
    fits = [v for v in available if v in VARIANTS and v not in exclude and required_flags(v) <= flags]
    return max(fits, key=lambda v: (_score(v), v), default=None)


def cpu_flags(path: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags the kernel lists for every CPU (a thread may move between them)."""
    per_cpu = [
        frozenset(line.split(":", 1)[1].split())
        for line in Path(path).read_text().splitlines()
        if line.split(":", 1)[0].strip() == "flags" and ":" in line
    ]
    return frozenset.intersection(*per_cpu) if per_cpu else frozenset()


def llama_lib_dir() -> Path:
    """The directory llama-cpp-python loads its libraries from, found without importing it."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")  # llama_cpp itself honours it
    if override:
        return Path(override)
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        raise CpuBackendError("llama-cpp-python is not installed (scripts/install installs it)")
    return Path(next(iter(spec.submodule_search_locations))) / "lib"


def variants_on_disk(lib_dir: Path) -> list[str]:
    """The CPU variants built beside libggml.so; none for a build with the CPU backend linked in."""
    found = (_VARIANT_FILE.match(p.name) for p in lib_dir.glob("libggml-cpu-*.so"))
    return sorted(m.group(1) for m in found if m)


def load_cpu_backend(variant: str = "auto", exclude: Collection[str] = ()) -> str:
    """Register llama.cpp's CPU backend in this process and return the variant's name.

    ``auto`` picks with :func:`choose_variant`; a name forces that variant (it must be on disk and the
    kernel must list its flags). Returns ``builtin`` for a build without variants (the CPU backend is
    part of libggml) and ``auto`` where ggml chose (not x86). Calling it again returns what is loaded.
    """
    lib_dir = llama_lib_dir()
    on_disk = variants_on_disk(lib_dir)
    if not on_disk:
        return "builtin"
    ggml = _ggml(lib_dir)
    if ggml.ggml_backend_reg_by_name(b"CPU"):
        loaded = _loaded_variant() or "auto"
        if variant not in ("auto", loaded):
            raise CpuBackendError(f"llama.cpp's CPU backend {loaded!r} is already loaded: cannot load {variant!r}")
        return loaded
    if platform.machine().lower() not in ("x86_64", "amd64"):
        if variant == "auto":
            with _ggml_log(ggml) as log:
                ggml.ggml_backend_load_all_from_path(str(lib_dir).encode())
            if not ggml.ggml_backend_reg_by_name(b"CPU"):
                raise CpuBackendError(f"no llama.cpp CPU variant in {lib_dir} loads here: {' '.join(log)}")
            return "auto"
        name = variant
    else:
        name = _pick(variant, on_disk, cpu_flags(), exclude, lib_dir)
    if name not in on_disk:
        raise CpuBackendError(f"llama.cpp has no CPU variant {name!r} in {lib_dir}: it has {', '.join(on_disk)}")
    with _ggml_log(ggml) as log:
        reg = ggml.ggml_backend_load(str(lib_dir / f"libggml-cpu-{name}.so").encode())
    if not reg:
        raise CpuBackendError(f"llama.cpp's CPU variant {name!r} did not load: {' '.join(log) or 'no reason given'}")
    return name


def _pick(variant: str, on_disk: list[str], flags: frozenset[str], exclude: Collection[str], lib_dir: Path) -> str:
    if variant == "auto":
        name = choose_variant(on_disk, flags, exclude)
        if name is None:
            why = [_missing(v, flags) for v in on_disk if v in VARIANTS and v not in exclude]
            raise CpuBackendError(
                f"no llama.cpp CPU variant in {lib_dir} fits this CPU: it has {', '.join(on_disk)}"
                + (f" (excluded: {', '.join(sorted(exclude))})" if exclude else "")
                + "".join(f"; {w}" for w in why)
            )
        return name
    if variant in VARIANTS and not required_flags(variant) <= flags:
        raise CpuBackendError(f"llama.cpp's CPU variant {variant!r} cannot run here: {_missing(variant, flags)}")
    return variant


def _missing(variant: str, flags: frozenset[str]) -> str:
    return f"{variant} needs {' '.join(sorted(required_flags(variant) - flags))}"


def _ggml(lib_dir: Path) -> ctypes.CDLL:
    """ggml's functions as libllama sees them: the wheel holds libggml.so and libggml.so.0 as two files, and
    only the one libllama links (found through its dependencies) holds the registry llama.cpp uses."""
    ggml = ctypes.CDLL(str(lib_dir / "libllama.so"), mode=ctypes.RTLD_GLOBAL)  # the path llama_cpp loads
    ggml.ggml_backend_reg_by_name.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_by_name.restype = ctypes.c_void_p
    ggml.ggml_backend_load.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load.restype = ctypes.c_void_p
    ggml.ggml_backend_load_all_from_path.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_load_all_from_path.restype = None
    return ggml


_LogCallback = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


@contextlib.contextmanager
def _ggml_log(ggml: ctypes.CDLL) -> Iterator[list[str]]:
    """Collect what ggml logs inside the block (its reason when a load fails) instead of printing it."""
    lines: list[str] = []

    def record(_level: int, text: bytes | None, _data: object) -> None:
        if text and text.strip():
            lines.append(text.decode(errors="replace").strip())

    callback = _LogCallback(record)  # referenced until ggml has its previous logger back
    prev_fn, prev_data = ctypes.c_void_p(), ctypes.c_void_p()
    ggml.ggml_log_get(ctypes.byref(prev_fn), ctypes.byref(prev_data))
    ggml.ggml_log_set(callback, None)
    try:
        yield lines
    finally:
        ggml.ggml_log_set(prev_fn, prev_data)


def _loaded_variant() -> str | None:
    """The libggml-cpu-*.so mapped into this process: the one an earlier call registered."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return None
    for line in maps.splitlines():
        match = _VARIANT_FILE.search(line)
        if match:
            return match.group(1)
    return None
