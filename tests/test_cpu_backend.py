"""Which llama.cpp CPU variant ARK loads: chosen from the kernel's flags, then registered for real."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ark.engines.cpu_backend import (
    VARIANTS,
    CpuBackendError,
    choose_variant,
    cpu_flags,
    llama_lib_dir,
    variants_on_disk,
)

# /proc/cpuinfo flag lines as the kernel printed them (trimmed of flags no variant needs)
BASE = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat clflush mmx fxsr sse sse2 ht syscall nx lm"
SSE4 = "pni pclmulqdq ssse3 cx16 sse4_1 sse4_2 popcnt aes xsave"
AVX2_DESKTOP = f"{BASE} {SSE4} fma movbe avx f16c rdrand lahf_lm abm bmi1 avx2 smep bmi2 erms invpcid"  # i7-4770
AVX512 = "avx512f avx512dq avx512cd avx512bw avx512vl"
SKYLAKE_SERVER = f"{AVX2_DESKTOP} {AVX512} clflushopt clwb"  # Xeon Gold 6130: no VNNI, no VBMI
ZEN4 = f"{AVX2_DESKTOP} {AVX512} avx512ifma avx512vbmi avx512_vbmi2 avx512_vnni avx512_bitalg avx512_bf16"  # EPYC 9004
# A Sapphire Rapids guest whose hypervisor does not pass AMX through: the kernel lists AVX-512 (with BF16,
# VNNI and VBMI) and AVX-VNNI, but no amx_tile / amx_int8
SPR_VM = f"{ZEN4} avx_vnni avx512_fp16 amx_bf16"
SPR_METAL = f"{SPR_VM} amx_tile amx_int8"
SSE2_ONLY = BASE


def flags(line: str) -> set[str]:
    return set(line.split())


@pytest.mark.parametrize(
    ("cpu", "expected"),
    [
        (AVX2_DESKTOP, "haswell"),
        (SKYLAKE_SERVER, "skylakex"),
        (ZEN4, "zen4"),
        (SPR_VM, "zen4"),  # the best without AMX: never sapphirerapids
        (SPR_METAL, "sapphirerapids"),
        (SSE2_ONLY, "x64"),
    ],
)
def test_the_most_capable_variant_the_kernel_enables_wins(cpu: str, expected: str) -> None:
    assert choose_variant(VARIANTS, flags(cpu)) == expected


def test_an_excluded_variant_gives_way_to_the_next_best() -> None:
    assert choose_variant(VARIANTS, flags(SPR_VM), exclude={"zen4"}) == "cooperlake"
    assert choose_variant(VARIANTS, flags(SPR_VM), exclude={"zen4", "cooperlake"}) == "icelake"
    assert choose_variant(VARIANTS, flags(AVX2_DESKTOP), exclude={"haswell"}) == "piledriver"


def test_only_variants_on_disk_and_known_count() -> None:
    assert choose_variant(["x64", "haswell", "future9000"], flags(SPR_METAL)) == "haswell"
    assert choose_variant(["skylakex"], flags(AVX2_DESKTOP)) is None
    assert choose_variant([], flags(SPR_METAL)) is None
    assert choose_variant(["x64"], flags(SSE2_ONLY), exclude=["x64"]) is None


def test_cpu_flags_are_those_every_cpu_lists(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: sse2 avx avx2 avx512f\nbugs\t\t: spectre_v1\n\n"
        "processor\t: 1\nmodel name\t: Test CPU\nflags\t\t: sse2 avx avx2\nbugs\t\t: spectre_v1\n\n"
    )
    assert cpu_flags(cpuinfo) == {"sse2", "avx", "avx2"}
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd\n")
    assert cpu_flags(tmp_path / "arm") == frozenset()


def _portable_build() -> bool:
    try:
        return bool(variants_on_disk(llama_lib_dir()))
    except CpuBackendError:  # llama-cpp-python is not installed
        return False


portable = pytest.mark.skipif(not _portable_build(), reason="llama-cpp-python is not the portable build")


def _run(code: str) -> subprocess.CompletedProcess[str]:
    # A process of its own: a CPU backend, once registered, stays for the life of the process.
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=False
    )


@portable
def test_the_chosen_variant_registers_and_generates(tiny_gguf: Path) -> None:
    result = _run(
        f"""
        import json
        from ark.engines.cpu_backend import load_cpu_backend
        variant = load_cpu_backend()
        again = load_cpu_backend()
        import llama_cpp
        llm = llama_cpp.Llama(model_path={str(tiny_gguf)!r}, n_threads=1, n_ctx=64, seed=1, verbose=False)
        out = llm.create_completion("hello", max_tokens=4, temperature=0)
        print(json.dumps({{"variant": variant, "again": again, "tokens": out["usage"]["completion_tokens"]}}))
        """
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert report["variant"] == choose_variant(variants_on_disk(llama_lib_dir()), cpu_flags())
    assert report["again"] == report["variant"]
    assert report["tokens"] == 4


@portable
def test_a_variant_that_cannot_load_is_a_clear_error() -> None:
    result = _run(
        """
        from ark.engines.cpu_backend import VARIANTS, CpuBackendError, load_cpu_backend
        for kwargs in ({"variant": "pentium"}, {"exclude": set(VARIANTS)}):
            try:
                load_cpu_backend(**kwargs)
            except CpuBackendError as e:
                print(e)
        """
    )
    assert result.returncode == 0, result.stderr
    missing, nothing_fits = result.stdout.splitlines()
    assert "no CPU variant 'pentium'" in missing and "haswell" in missing
    assert "no llama.cpp CPU variant" in nothing_fits and "excluded:" in nothing_fits


@portable
@pytest.mark.skipif("amx_int8" in cpu_flags(), reason="this CPU runs every variant")
def test_a_forced_variant_the_kernel_does_not_enable_names_the_missing_flags() -> None:
    result = _run(
        """
        from ark.engines.cpu_backend import CpuBackendError, load_cpu_backend
        try:
            load_cpu_backend("sapphirerapids")
        except CpuBackendError as e:
            print(e)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "'sapphirerapids' cannot run here: sapphirerapids needs" in result.stdout
    assert "amx_int8" in result.stdout
